#!/usr/bin/env bash
# Boots the probe under QEMU microvm with a tap backend inside a network
# namespace this script creates (and deletes on exit). The namespace side of
# the tap is 192.0.2.1/24 and 2001:db8::1/64 (TEST-NET); the probe gets
# 192.0.2.2/24 unless PROBE-ARGS say otherwise. Needs root.
#
# Usage: [PEER_CMD="./host-peer.py sink 7001"] tap-netns.sh PROBE-ARGS...
#   PEER_CMD runs inside the namespace (with PEER_BIND=192.0.2.1) before QEMU
#   starts, and is waited for after QEMU exits.
# Exit status is QEMU's ((V << 1) | 1 for probe status V).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ns="probe-tap-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev tap0 mode tap
ip -n "$ns" addr add 192.0.2.1/24 dev tap0
ip -n "$ns" addr add 2001:db8::1/64 dev tap0 nodad
ip -n "$ns" link set tap0 up
peer_pid=""
if [[ -n "${PEER_CMD:-}" ]]; then
    # shellcheck disable=SC2086
    (cd "$here" && ip netns exec "$ns" env PEER_BIND=192.0.2.1 $PEER_CMD) &
    peer_pid=$!
    sleep 0.5
fi
args=("$@")
if ! printf '%s\n' "${args[@]}" | grep -q '^probe.ip='; then
    args+=(probe.ip=192.0.2.2/24 probe.gw=192.0.2.1)
fi
status=0
ip netns exec "$ns" env QEMU_EXTRA="-global virtio-mmio.force-legacy=false \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=n0" \
    "$here/qemu-run.sh" "${args[@]}" || status=$?
if [[ -n "$peer_pid" ]]; then
    wait "$peer_pid" || true
fi
exit "$status"
