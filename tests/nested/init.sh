#!/bin/busybox sh
# /init of the nested harness's outer VM (cargo xtask nested; tests/src/nested/).
# Mounts, loads the hypervisor and the few modules the scenarios need, then hands over to
# the runner, which reports on the second serial port; powers off when it is done.
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd tun dummy qemu_fw_cfg; do
	insmod "/lib/modules/$m.ko" || echo "rf-outer: cannot load $m.ko"
done
[ -c /dev/kvm ] || echo "rf-outer: no /dev/kvm after loading kvm-amd: does this QEMU emulate AMD SVM (-cpu qemu64,+svm)?"
rf-nested run /sys/firmware/qemu_fw_cfg/by_name/opt/ringfence/scenarios.json/raw /dev/ttyS1 ||
	echo "rf-outer: the runner failed"
poweroff -f
