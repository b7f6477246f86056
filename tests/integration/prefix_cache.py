#!/usr/bin/env python3
"""prefix_cache.py: the prefix cache through the real daemon (issue 23).

Starts `dsinfer serve` on the CPU backend over TLS on a free loopback port and
checks, on models/demo (Qwen2 layout) and models/demo-v3 (MLA + MoE):

- greedy answers are identical with the cache on (second request mostly served
  from it) and off (a daemon with --prefix-cache false), chat and completions;
- usage reports it: prompt_tokens_details.cached_tokens, prompt_cache_hit_tokens
  + prompt_cache_miss_tokens == prompt_tokens, in plain and streamed answers;
- isolation: another key does not hit a key's prefix; keys of one keys-file
  cache_group do; a cache_salt narrows further; prefix_cache_scope global shares;
- /metrics counts hits, misses and cached blocks;
- kv_dtype int8: the same reuse and equal greedy answers on both models;
- n > 1: n indexed choices computed from one prompt pass (later choices hit
  it), usage counting every choice's tokens, streamed chunks with their index,
  choice i sampling like a single request with seed + i, n past 16 refused.

    DSI_BIN=build/dsinfer tests/integration/prefix_cache.py
    DSI_BACKEND=cuda DSI_BIN=... tests/integration/prefix_cache.py   # on a GPU machine

Exit 0 pass, 1 fail, 77 skipped (no binary or model). Standard library only.
"""
import os
import sys
import tempfile
import urllib.error

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import dsitest  # noqa: E402
from dsitest import BIN, add_key, check  # noqa: E402

BACKEND = os.environ.get("DSI_BACKEND", "cpu")  # cuda: the same checks on the GPU


def Daemon(work, model, keys, args=()):
    """model on BACKEND (DSI_BACKEND) with 16-token KV blocks."""
    return dsitest.Daemon(work, model, keys, ["--backend", BACKEND, "--kv-block-size", "16"] + list(args),
                          wait_s=90)


SYSTEM = ("You are a careful assistant for the billing team. Answer in one short sentence, cite the policy "
          "number when there is one, and never invent account data. ") * 4


def chat(question, **kw):
    b = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
         "max_tokens": 8, "temperature": 0}
    b.update(kw)
    return b


def completion(question, **kw):
    b = {"prompt": SYSTEM + "\nQ: " + question + "\nA:", "max_tokens": 8, "temperature": 0}
    b.update(kw)
    return b


def usage_ok(u):
    d = u.get("prompt_tokens_details") or {}
    return (d.get("cached_tokens") == u.get("prompt_cache_hit_tokens") and
            u["prompt_cache_hit_tokens"] + u["prompt_cache_miss_tokens"] == u["prompt_tokens"])


def cached(r):
    return r["usage"]["prompt_tokens_details"]["cached_tokens"]


def same_answers(tag, on, off, k):
    """Greedy answers with the cache on (the second request mostly from it)
    equal those with it off, chat and completions."""
    q = "Who approves a credit note?"
    a1 = on.post("/v1/chat/completions", k, chat(q))
    a2 = on.post("/v1/chat/completions", k, chat(q + " Please be brief."))
    b1 = off.post("/v1/chat/completions", k, chat(q))
    b2 = off.post("/v1/chat/completions", k, chat(q + " Please be brief."))
    check(tag + ": second chat served mostly from the cache", cached(a2) >= a2["usage"]["prompt_tokens"] - 32,
          a2["usage"])
    check(tag + ": cache off reports nothing cached", cached(b1) == 0 and cached(b2) == 0)
    check(tag + ": greedy chat answers equal with and without the cache",
          [a1["choices"][0]["message"]["content"], a2["choices"][0]["message"]["content"]] ==
          [b1["choices"][0]["message"]["content"], b2["choices"][0]["message"]["content"]])
    on.post("/v1/completions", k, completion("Where are invoices kept?"))
    c1 = on.post("/v1/completions", k, completion("Where are receipts kept?"))
    c2 = off.post("/v1/completions", k, completion("Where are receipts kept?"))
    check(tag + ": completions hit and equal the uncached answer",
          cached(c1) > 0 and c1["choices"][0]["text"] == c2["choices"][0]["text"], c1["usage"])


def isolation(d, alice, bob, carol, dave, mon):
    r1 = d.post("/v1/chat/completions", alice, chat("What is the refund window?"))
    r2 = d.post("/v1/chat/completions", alice, chat("Can I pay by card?"))
    check("first request: nothing cached", cached(r1) == 0, r1["usage"])
    check("usage fields add up", usage_ok(r1["usage"]) and usage_ok(r2["usage"]), r2["usage"])
    check("same key, shared system prompt: cached in whole blocks", cached(r2) > 0 and cached(r2) % 16 == 0,
          r2["usage"])
    rb = d.post("/v1/chat/completions", bob, chat("Can I pay by card?"))
    check("another key does not hit alice's prefix", cached(rb) == 0, rb["usage"])
    s1 = d.post("/v1/chat/completions", alice, chat("Can I pay by card?", cache_salt="doc-1"))
    s2 = d.post("/v1/chat/completions", alice, chat("Can I pay by cheque?", cache_salt="doc-1"))
    check("a new cache_salt starts empty", cached(s1) == 0, s1["usage"])
    check("the same cache_salt hits", cached(s2) > 0, s2["usage"])
    d.post("/v1/chat/completions", carol, chat("Is VAT included?"))
    rd = d.post("/v1/chat/completions", dave, chat("Is VAT shown?"))
    check("keys of one cache_group share", cached(rd) > 0, rd["usage"])
    ev = d.post("/v1/chat/completions", alice,
                chat("Can I pay by card?", stream=True, stream_options={"include_usage": True}))
    last = [e for e in ev if e.get("usage")]
    check("streamed final usage carries the cache fields",
          len(last) == 1 and usage_ok(last[0]["usage"]) and last[0]["usage"]["prompt_cache_hit_tokens"] > 0, last)
    m = d.metrics(mon)
    check("metrics count hit and miss tokens",
          int(m.get("dsinfer_prefix_cache_hit_tokens_total", 0)) >= cached(r2) + cached(s2) + cached(rd) and
          int(m.get("dsinfer_prefix_cache_miss_tokens_total", 0)) > 0, m.get("dsinfer_prefix_cache_hit_tokens_total"))
    check("metrics count cached blocks", int(m.get("dsinfer_kv_blocks_cached", 0)) > 0)
    check("metrics export evictions", "dsinfer_kv_evictions_total" in m)


def post_status(d, path, key, body):
    try:
        d.post(path, key, body)
        return 200
    except urllib.error.HTTPError as e:
        return e.code


def n_choices(d, alice, mon):
    q = "List three payment methods."
    one = d.post("/v1/chat/completions", alice, chat(q, cache_salt="n-test"))
    hits0 = int(d.metrics(mon).get("dsinfer_prefix_cache_hit_tokens_total", 0))
    r = d.post("/v1/chat/completions", alice, chat(q, n=3, cache_salt="n-test2"))
    hits = int(d.metrics(mon).get("dsinfer_prefix_cache_hit_tokens_total", 0)) - hits0
    # a fresh salt: choice 0 computes the prompt, choices 1 and 2 map its whole
    # blocks (up to the last token, which each computes for its logits)
    whole = (one["usage"]["prompt_tokens"] - 1) // 16 * 16
    check("n=3: the prompt is computed once, choices 1..2 share its blocks",
          cached(r) == 0 and whole > 0 and hits == 2 * whole, (hits, whole, r["usage"]))
    ch = r["choices"]
    check("n=3: three choices indexed 0..2", [c["index"] for c in ch] == [0, 1, 2], ch)
    check("n=3 greedy: every choice is the n=1 answer",
          all(c["message"]["content"] == one["choices"][0]["message"]["content"] for c in ch))
    u = r["usage"]
    check("n=3: usage counts the prompt once and every choice's tokens",
          u["prompt_tokens"] == one["usage"]["prompt_tokens"] and
          u["completion_tokens"] == 3 * one["usage"]["completion_tokens"] and usage_ok(u), u)
    s1 = [d.post("/v1/completions", alice, completion(q, temperature=1.0, seed=40 + i, max_tokens=6))["choices"][0]["text"]
          for i in range(2)]
    rn = d.post("/v1/completions", alice, completion(q, temperature=1.0, seed=40, max_tokens=6, n=2))
    check("n=2 seeded: choice i samples like one request with seed + i",
          [c["text"] for c in sorted(rn["choices"], key=lambda c: c["index"])] == s1, (s1, rn["choices"]))
    rn2 = d.post("/v1/completions", alice, completion(q, temperature=1.0, seed=40, max_tokens=6, n=2))
    check("n=2 seeded: the same request gives the same choices again",
          [c["text"] for c in rn2["choices"]] == [c["text"] for c in rn["choices"]], (rn["choices"], rn2["choices"]))
    ev = d.post("/v1/chat/completions", alice, chat(q, n=2, stream=True, stream_options={"include_usage": True}))
    fins = sorted(c["index"] for e in ev for c in e.get("choices", []) if c.get("finish_reason"))
    last = [e for e in ev if e.get("usage")]
    check("n=2 stream: each index finishes once, one usage chunk",
          fins == [0, 1] and len(last) == 1 and last[0]["usage"]["completion_tokens"] == 2 * one["usage"]["completion_tokens"], (fins, last))
    check("n=17 is refused with 400", post_status(d, "/v1/chat/completions", alice, chat(q, n=17)) == 400)


def main():
    for m in ("models/demo", "models/demo-v3"):
        if not os.path.exists(m + "/model.safetensors"):
            print("SKIP: no model at " + m)
            return 77
    if not os.access(BIN, os.X_OK):
        print("SKIP: no dsinfer binary at " + BIN)
        return 77
    with tempfile.TemporaryDirectory(prefix="dsinfer-prefix.") as work:
        keys = os.path.join(work, "keys.json")
        alice = add_key(keys, "alice", "user")
        bob = add_key(keys, "bob", "user")
        carol = add_key(keys, "carol", "user", "--cache-group", "team-a")
        dave = add_key(keys, "dave", "user", "--cache-group", "team-a")
        mon = add_key(keys, "prom", "monitor")

        d = Daemon(work, "models/demo", keys)
        off = Daemon(work, "models/demo", keys, ["--prefix-cache", "false"])
        try:
            if not d.ok or not off.ok:
                check("daemons start", False)
                return 1
            isolation(d, alice, bob, carol, dave, mon)
            n_choices(d, alice, mon)
            same_answers("demo", d, off, alice)
        finally:
            d.stop()
            off.stop()

        g = Daemon(work, "models/demo", keys, ["--prefix-cache-scope", "global"])
        try:
            g.post("/v1/chat/completions", alice, chat("What is the refund window?"))
            rb = g.post("/v1/chat/completions", bob, chat("What is the refund window?"))
            check("prefix_cache_scope global: bob hits alice's prefix", g.ok and cached(rb) > 0, rb["usage"])
        finally:
            g.stop()

        on = Daemon(work, "models/demo-v3", keys)
        off = Daemon(work, "models/demo-v3", keys, ["--prefix-cache", "false"])
        try:
            check("demo-v3 daemons start", on.ok and off.ok)
            if on.ok and off.ok:
                same_answers("demo-v3", on, off, alice)
        finally:
            on.stop()
            off.stop()

        # the 8-bit cache: its blocks are reused the same way (dense and MLA latent)
        for m, tag in (("models/demo", "demo int8 KV"), ("models/demo-v3", "demo-v3 int8 KV")):
            on = Daemon(work, m, keys, ["--kv-dtype", "int8"])
            off = Daemon(work, m, keys, ["--kv-dtype", "int8", "--prefix-cache", "false"])
            try:
                check(tag + " daemons start", on.ok and off.ok)
                if on.ok and off.ok:
                    check(tag + ": /metrics names the int8 cache",
                          on.metrics(mon).get('dsinfer_kv_cache_info{dtype="int8"}') == "1")
                    same_answers(tag, on, off, alice)
            finally:
                on.stop()
                off.stop()
    return dsitest.summary()


if __name__ == "__main__":
    sys.exit(main())
