#!/usr/bin/env python3
"""Host-side peers for the probe's network scenarios (loopback only).

  host-peer.py sink PORT            accept one TCP connection, read to EOF, print bytes/seconds/gbps
  host-peer.py source PORT BYTES    accept one TCP connection, send BYTES of the probe pattern
                                    (byte[i] = i % 251), close, print the SHA-256
  host-peer.py echo PORT [CONNS]    TCP echo, CONNS connections (default 1)
  host-peer.py udp-echo PORT SECS   UDP echo for SECS seconds
  host-peer.py client PORT DATA     connect to 127.0.0.1:PORT, send DATA, read the echo to EOF
  host-peer.py dns PORT SECS        tiny DNS server: A probe.test -> 192.0.2.10, any other name
                                    NXDOMAIN (under slirp use port 53 and probe.dns=10.0.2.2)

Binds 127.0.0.1 (or $PEER_BIND inside a test's own netns); prints one JSON line. Under QEMU slirp the guest reaches
it as 10.0.2.2:PORT.
"""
import hashlib
import json
import socket
import sys
import os
import time

# Address the servers bind (loopback unless a test inside its own network
# namespace sets PEER_BIND).
BIND = os.environ.get("PEER_BIND", "127.0.0.1")


def parse_size(s):
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(s[-1].lower(), 1)
    return int(s[:-1] if mult > 1 else s) * mult


def listen(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((BIND, port))
    srv.listen(8)
    srv.settimeout(60)
    return srv


def sink(port):
    srv = listen(port)
    conn, _ = srv.accept()
    conn.settimeout(60)
    total, t0 = 0, time.monotonic()
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
    secs = time.monotonic() - t0
    conn.close()
    print(json.dumps({"peer": "sink", "bytes": total, "seconds": round(secs, 6),
                      "gbps": round(total * 8 / secs / 1e9, 3) if secs > 0 else None}))


def pattern_chunk():
    return bytes(i % 251 for i in range(251 * 4096))


def source(port, nbytes):
    srv = listen(port)
    conn, _ = srv.accept()
    conn.settimeout(60)
    chunk, sent, h = pattern_chunk(), 0, hashlib.sha256()
    while sent < nbytes:
        off = sent % 251
        piece = chunk[off:off + min(nbytes - sent, len(chunk) - off)]
        conn.sendall(piece)
        h.update(piece)
        sent += len(piece)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # wait for the probe's close
    conn.close()
    print(json.dumps({"peer": "source", "bytes": sent, "sha256": h.hexdigest()}))


def echo(port, conns):
    srv = listen(port)
    total = 0
    for _ in range(conns):
        conn, _ = srv.accept()
        conn.settimeout(60)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
            total += len(data)
        conn.close()
    print(json.dumps({"peer": "echo", "conns": conns, "bytes": total}))


def udp_echo(port, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((BIND, port))
    s.settimeout(0.2)
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:
            continue
        s.sendto(data, addr)
        n += 1
    print(json.dumps({"peer": "udp-echo", "datagrams": n}))


def client(port, data):
    s = socket.create_connection((BIND, port), timeout=30)
    s.sendall(data.encode())
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    print(json.dumps({"peer": "client", "sent": data, "received": got.decode(errors="replace")}))


def dns(port, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((BIND, port))
    s.settimeout(0.2)
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        try:
            q, addr = s.recvfrom(512)
        except socket.timeout:
            continue
        if len(q) < 12:
            continue
        # Question: labels from offset 12, then QTYPE, QCLASS.
        i, labels = 12, []
        while i < len(q) and q[i] != 0:
            labels.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
            i += 1 + q[i]
        qend = i + 5
        qtype = int.from_bytes(q[i + 1:i + 3], "big")
        name = ".".join(labels).lower()
        known = name == "probe.test"
        answer = b""
        if known and qtype == 1:
            answer = b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + \
                (60).to_bytes(4, "big") + (4).to_bytes(2, "big") + bytes([192, 0, 2, 10])
        flags = 0x8180 if known else 0x8183
        hdr = q[:2] + flags.to_bytes(2, "big") + (1).to_bytes(2, "big") + \
            (1 if answer else 0).to_bytes(2, "big") + b"\x00\x00\x00\x00"
        s.sendto(hdr + q[12:qend] + answer, addr)
        n += 1
    print(json.dumps({"peer": "dns", "queries": n}))


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    mode, port = a[0], int(a[1])
    if mode == "sink":
        sink(port)
    elif mode == "source":
        source(port, parse_size(a[2]))
    elif mode == "echo":
        echo(port, int(a[2]) if len(a) > 2 else 1)
    elif mode == "udp-echo":
        udp_echo(port, float(a[2]))
    elif mode == "dns":
        dns(port, float(a[2]))
    elif mode == "client":
        client(port, a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
