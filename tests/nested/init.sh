#!/bin/busybox sh
# /init of the nested harness's outer VM (cargo xtask nested; tests/src/nested/).
# Mounts, loads the hypervisor and the few modules the scenarios need, then hands over to
# the runner, which reports on the second serial port; powers off when it is done.
# The benchmark kit's outer VM moves its root from the initramfs to a tmpfs first: passt's
# sandbox pivot_roots, which the initramfs root does not allow. The marker file is left
# behind, so the /init started by switch_root goes straight on.
if [ -e /etc/rf-tmpfs-root ]; then
	/bin/busybox mkdir /newroot
	/bin/busybox mount -t tmpfs -o size=1536m root /newroot
	for d in /*; do
		case "$d" in /proc | /sys | /dev | /newroot) ;; *) /bin/busybox cp -a "$d" /newroot/ ;; esac
	done
	/bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
	/bin/busybox rm /newroot/etc/rf-tmpfs-root
	exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin:/sbin HOME=/root
mount -t proc proc /proc
chmod 1777 /tmp
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in irqbypass kvm kvm-amd tun dummy qemu_fw_cfg; do
	insmod "/lib/modules/$m.ko" || echo "rf-outer: cannot load $m.ko"
done
[ -c /dev/kvm ] || echo "rf-outer: no /dev/kvm after loading kvm-amd: does this QEMU emulate AMD SVM (-cpu qemu64,+svm)?"
rf-nested run /sys/firmware/qemu_fw_cfg/by_name/opt/ringfence/scenarios.json/raw /dev/ttyS1 ||
	echo "rf-outer: the runner failed"
poweroff -f
