#!/usr/bin/env python3
"""n_choices.py: what n > 1 saves over n separate requests (issue 23 item 2),
on the CPU backend with the demo model.

Starts `dsinfer serve` twice (prefix cache on, then `--prefix-cache false`) and,
REPEATS times each, sends one /v1/completions request with n=4 and then four
concurrent single requests with seeds 1..4 (each with its own cache_salt, so
they cannot share blocks with each other or with the n=4 request). For each it
prints the prompt tokens computed and reused (from
dsinfer_prefix_cache_{miss,hit}_tokens_total) and the wall time, and whether the
n=4 choices equal the four single answers (they must: choice i runs seed + i).

    DSI_BIN=build/dsinfer python3 bench/n_choices.py [--repeats 3]

Standard library only; reuses the test suite's daemon helpers (tests/lib).
"""
import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
import dsitest  # noqa: E402
from dsitest import add_key  # noqa: E402

# about 620 prompt tokens on models/demo
SYSTEM = ("You are a careful assistant for the billing team. Answer in one short sentence, cite the policy "
          "number when there is one, and never invent account data. ") * 12
N = 4


def body(salt, **kw):
    b = {"prompt": SYSTEM + "\nQ: who approves?\nA:", "max_tokens": 16, "temperature": 1.0, "seed": 1,
         "cache_salt": salt, "ignore_eos": True}
    b.update(kw)
    return b


def cache_counts(d, mon):
    m = d.metrics(mon)
    return (int(m.get("dsinfer_prefix_cache_miss_tokens_total", 0)),
            int(m.get("dsinfer_prefix_cache_hit_tokens_total", 0)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        keys = os.path.join(work, "keys.json")
        user = add_key(keys, "a", "user")
        mon = add_key(keys, "m", "monitor")
        for label, extra in (("cache on", []), ("cache off", ["--prefix-cache", "false"])):
            d = dsitest.Daemon(work, "models/demo", keys, ["--backend", "cpu", "--kv-block-size", "16"] + extra,
                               wait_s=60)
            if not d.ok:
                print("daemon did not start")
                return 1
            try:
                for rep in range(args.repeats):
                    m0 = cache_counts(d, mon)
                    t = time.time()
                    r = d.post("/v1/completions", user, body("n%d" % rep, n=N))
                    t_n = time.time() - t
                    m1 = cache_counts(d, mon)
                    single = [None] * N

                    def one(i):
                        single[i] = d.post("/v1/completions", user, body("s%d-%d" % (rep, i), seed=1 + i))
                    threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
                    t = time.time()
                    for th in threads:
                        th.start()
                    for th in threads:
                        th.join()
                    t_s = time.time() - t
                    m2 = cache_counts(d, mon)
                    same = [c["text"] for c in r["choices"]] == [x["choices"][0]["text"] for x in single]
                    print("%s rep %d: prompt %d tokens | n=%d: computed %d, reused %d, %.2f s | %d requests: "
                          "computed %d, reused %d, %.2f s | same text: %s"
                          % (label, rep, r["usage"]["prompt_tokens"], N, m1[0] - m0[0], m1[1] - m0[1], t_n,
                             N, m2[0] - m1[0], m2[1] - m1[1], t_s, same))
            finally:
                d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
