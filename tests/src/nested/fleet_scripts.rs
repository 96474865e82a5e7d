//! The outer-VM scripts of the fleet scenarios (drives, vsock, Kata's call sequence); the
//! tests that read their `CHECK` lines are in `tests/tests/nested_linux/fleet.rs`.

/// Unpacks the image's root filesystem into the scenario's directory.
const UNPACK_ROOT: &str =
    "gunzip -c \"$HOME/.cache/ringfence/linux/rootfs.ext4.gz\" > \"$RF_DIR/rootfs.ext4\" || exit 90";

/// `ringfence run --linux` with the guest's root on a drive, a data drive the guest writes
/// and the host reads back, a read-only drive, and a vsock device the host reaches the agent
/// through while the guest runs.
pub fn drives_outer() -> String {
    format!(
        r#"{UNPACK_ROOT}
D="$RF_DIR"
dd if=/dev/zero of="$D/data.img" bs=1024 count=1024 2>/dev/null
printf host-data | dd of="$D/data.img" conv=notrunc 2>/dev/null
dd if=/dev/zero of="$D/ro.img" bs=1024 count=64 2>/dev/null
printf readonly | dd of="$D/ro.img" conv=notrunc 2>/dev/null
cp "$D/ro.img" "$D/ro.orig"
ringfence run --linux --mem 256 --timeout 150 --vsock "uds=$D/v.sock" \
  --drive "path=$D/rootfs.ext4,root" --drive "path=$D/data.img,id=data-disk" --drive "path=$D/ro.img,ro" \
  -- sh -c '{GUEST}' > "$D/guest.out" 2>&1 &
VM=$!
# The agent answers on vsock port 1024 once the guest is up.
rf-nested vsock "$D/v.sock" 1024 "EXEC cat /sys/block/vdb/serial" 150 > "$D/vsock.out" 2> "$D/vsock.err"
echo "CHECK vsock_exec $(tr '\n' ' ' < "$D/vsock.out")"
rf-nested vsock "$D/v.sock" 1024 "EXEC touch /run/stop" 30 > /dev/null
wait $VM
echo "CHECK status $?"
cat "$D/guest.out"
echo "CHECK host_reads $(dd if="$D/data.img" bs=512 skip=1 count=1 2>/dev/null | head -c 13)"
cmp -s "$D/ro.img" "$D/ro.orig"; echo "CHECK ro_unchanged $?"
"#,
        GUEST = DRIVES_GUEST
    )
}

/// The guest side of [`drives_outer`] (inside single quotes: no `'`).
const DRIVES_GUEST: &str = r#"echo "CHECK root $(grep " / " /proc/mounts | cut -d" " -f1,3) $(grep -o "root=[^ ]*" /proc/cmdline)"
echo "CHECK serial $(cat /sys/block/vdb/serial)"
echo "CHECK reads $(head -c 9 /dev/vdb)"
printf guest-written | dd of=/dev/vdb bs=512 seek=1 conv=notrunc,fsync 2>/dev/null; echo "CHECK write $?"
echo "CHECK ro_flag $(cat /sys/block/vdc/ro)"
dd if=/dev/zero of=/dev/vdc bs=512 count=1 conv=fsync 2>/dev/null; echo "CHECK ro_write $?"
echo "CHECK ro_reads $(head -c 8 /dev/vdc)"
echo root-is-writable > /root/w && echo "CHECK rootfs_write ok"
while [ ! -e /run/stop ]; do sleep 0.2; done
exit 3"#;

/// Kata's Firecracker call sequence against `ringfence` standing in for `firecracker`
/// ([`super::fleet::kata`]).
pub fn kata_outer() -> String {
    format!(
        "{UNPACK_ROOT}\nrf-nested kata \"$RF_DIR\" sh -c 'while [ ! -e /run/stop ]; do sleep 0.2; done; exit {}'\n",
        super::fleet::SANDBOX_STATUS
    )
}
