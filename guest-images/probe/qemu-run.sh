#!/usr/bin/env bash
# Boots the probe under QEMU microvm with KVM.
# Usage: qemu-run.sh [--net] [--elf FILE] [--] PROBE-ARGS...
#   PROBE-ARGS become the kernel command line, e.g. probe.scenario=hello
#   --net     adds a slirp virtio-net device (-netdev user); extra QEMU
#             options can be passed in QEMU_EXTRA (word-split), extra
#             -netdev user options in QEMU_NETDEV_OPTS (e.g. hostfwd=tcp:127.0.0.1:7100-:8080).
# Exit status is QEMU's: (V << 1) | 1 for a probe exit status V.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
elf="$here/target/x86_64-unknown-linux-gnu/release/probe"
net=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --net) net=(-global virtio-mmio.force-legacy=false
                    -netdev user,id=n0${QEMU_NETDEV_OPTS:+,$QEMU_NETDEV_OPTS} -device virtio-net-device,netdev=n0); shift ;;
        --elf) elf="$2"; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if [[ ! -f "$elf" ]]; then
    echo "qemu-run.sh: no probe ELF at $elf; build it with 'cargo build --release' in $here" >&2
    exit 127
fi
# shellcheck disable=SC2086
exec qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities -m 128 \
    -nodefaults -no-user-config -nographic -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=4 \
    "${net[@]}" ${QEMU_EXTRA:-} \
    -kernel "$elf" -append "$*"
