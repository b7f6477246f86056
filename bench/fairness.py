#!/usr/bin/env python3
"""fairness.py: another key's time to first token while one key floods the
server (issue 26 item 3), on the CPU backend with the tiny test model.

Starts `dsinfer serve` (TLS, loopback), then measures the p50 / max TTFT of a
probe key's short streaming requests, one at a time:

    unloaded      nothing else running
    loaded        a flood key keeps FLOOD long requests in flight (more than
                  max_running, so most of them queue)
    same key      the probe uses the flood's key: one tenant, so admission is
                  plain FIFO, as every request was before keys shared the batch

    DSI_BIN=build/dsinfer python3 bench/fairness.py [--flood 64] [--probes 15]

Prints one line per case and the loaded/unloaded ratio. Standard library only;
reuses the test suite's daemon helpers (tests/hostile/gen_hostile.py).
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "hostile"))
import gen_hostile as gh  # noqa: E402


def ttft(port, key):
    """Seconds from sending a streaming request to its first content chunk."""
    body = {"model": "tiny-chat", "prompt": "hello", "max_tokens": 8, "stream": True, "ignore_eos": True}
    data = json.dumps(body).encode()
    s = gh.connect(port, 120)
    t0 = time.time()
    s.sendall(("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
               % (key, len(data))).encode() + data)
    buf, first = b"", None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        # the role-less first chunk of /v1/completions is text "", the next carries a token
        if first is None and buf.count(b'"text":') >= 2:
            first = time.time() - t0
    s.close()
    return first


def probe(port, key, n):
    out = [ttft(port, key) for _ in range(n)]
    out = sorted(x for x in out if x is not None)
    return out[len(out) // 2] if out else None, out[-1] if out else None, len(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flood", type=int, default=64, help="flood requests kept in flight")
    ap.add_argument("--probes", type=int, default=15)
    ap.add_argument("--max-running", type=int, default=8)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dsinfer-fair.")
    keys = os.path.join(work, "keys.json")
    flood_key = gh.add_key(keys, "flood", "user")
    probe_key = gh.add_key(keys, "probe", "user")
    d = gh.Daemon(work, keys, ["--max-running", str(a.max_running), "--max-queued", "1024", "--threads", "1",
                               "--queue-timeout-ms", "300000", "--max-connections-per-ip", "0"])
    if not d.ok:
        return 1
    stop = threading.Event()

    def flood_loop():
        body = {"model": "tiny-chat", "prompt": "hello", "max_tokens": 300, "ignore_eos": True}
        while not stop.is_set():
            try:
                gh.request(d.port, "POST", "/v1/completions", flood_key, body, timeout=600)
            except OSError:
                time.sleep(0.1)

    try:
        rows = [("unloaded", probe(d.port, probe_key, a.probes))]
        ts = [threading.Thread(target=flood_loop, daemon=True) for _ in range(a.flood)]
        for t in ts:
            t.start()
        time.sleep(2.0)
        rows.append(("loaded, other key", probe(d.port, probe_key, a.probes)))
        rows.append(("loaded, same key (FIFO)", probe(d.port, flood_key, max(3, a.probes // 3))))
        stop.set()
        base = rows[0][1][0]
        print("max_running %d, flood %d requests of 300 tokens in flight, probe 8 tokens, %s" %
              (a.max_running, a.flood, os.uname().nodename))
        for name, (p50, mx, n) in rows:
            print("%-26s p50 TTFT %7.3f s  max %7.3f s  (%d probes)  %.1fx unloaded" %
                  (name, p50, mx, n, p50 / base if base else 0))
    finally:
        stop.set()
        d.p.kill()
        d.p.wait()
        os.system("rm -rf " + work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
