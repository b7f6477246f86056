#!/usr/bin/env python3
"""backend_fault.py: a failing backend step through the real daemon (issue 26
item 2, the run-time half of "CUDA out of memory"), on the CPU backend with the
tiny model. The test build's fault hook (DSI_TEST_FAIL_STEP, dsinfer/fault.h)
fails chosen steps the way the GPU would:

    oom   a step fails once (a workspace that could not grow, memory another
          process took): the requests of that step end with a 503 body, or,
          streaming, with a service_unavailable/backend_error event and [DONE];
          the server recovers: the next requests are served, /health/ready
          stays 200, nothing leaks (running sequences and KV blocks back to 0).
    dead  a step fails with a sticky error (a poisoned CUDA context): the
          stream ends the same way, then /health/ready and /health/live answer
          503, new requests get 503 backend_failed, the systemd watchdog pings
          stop (a datagram socket stands in for systemd) so that systemd
          restarts the service, and nothing leaks.

Steps are counted from the daemon's start and every request here runs alone,
so each request's steps are known: a prompt shorter than prefill_chunk is one
step (it gives the first token) and every further token one more. Nothing
waits a fixed time for something to happen; it waits for the event itself.

    DSI_BIN=build/dsinfer DSI_TEST_HOOKS=1 tests/integration/backend_fault.py

Exit 0 pass, 1 fail, 77 skipped (no binary, no model, or a build without
test hooks). Standard library only.
"""
import json
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import dsitest  # noqa: E402
from dsitest import BIN, CTX, add_key, check, ends_with_error, sse_events  # noqa: E402

MODEL = "tests/golden/models/tiny-chat"
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}


def daemon(work, keys, fail, env_extra=None):
    """A daemon whose backend fails the steps in fail (DSI_TEST_FAIL_STEP)."""
    saved = dict(os.environ)
    os.environ["DSI_TEST_FAIL_STEP"] = fail
    os.environ.update(env_extra or {})
    try:
        return dsitest.Daemon(work, MODEL, keys, ["--backend", "cpu", "--dtype", "f32", "--threads", "1"],
                              log_name="daemon-%s.log" % fail.replace(",", "-").replace(":", "-"), wait_s=30,
                              check_exit=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def call(d, path, key, body=None):
    """(status, raw body) of a GET (body None) or POST."""
    data = json.dumps(body).encode() if body is not None else None
    hdr = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        hdr["Authorization"] = "Bearer " + key
    req = urllib.request.Request("https://127.0.0.1:%d%s" % (d.port, path), data=data, headers=hdr)
    try:
        with urllib.request.urlopen(req, context=CTX, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def content_chunks(raw):
    events, _ = sse_events(raw)
    return [e for e in events if e.get("choices") and e["choices"][0].get("delta", {}).get("content")]


def error_of(raw):
    try:
        return json.loads(raw).get("error", {})
    except ValueError:
        return {}


def settled(d, mon):
    """/metrics once no sequence runs or waits (the last final event may still
    be on its way out when the client has its answer)."""
    end = time.time() + 30
    while True:
        m = d.metrics(mon)
        if (m.get("dsinfer_running_sequences") == "0" and m.get("dsinfer_waiting_sequences") == "0") or \
                time.time() > end:
            return m
        time.sleep(0.05)


def check_clean(name, m):
    check(name + ": no sequence left running or waiting",
          m.get("dsinfer_running_sequences") == "0" and m.get("dsinfer_waiting_sequences") == "0")
    check(name + ": every KV block is back", m.get("dsinfer_kv_blocks_used") == "0",
          m.get("dsinfer_kv_blocks_used"))


def group_oom(work, keys, key, mon):
    # steps: stream 1-2 ok, 3 fails | plain request 4-5 ok, 6 fails | then all ok
    d = daemon(work, keys, "3,6:oom")
    if not d.ok:
        check("oom: daemon starts", False)
        return
    try:
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, stream=True, max_tokens=40))
        check("oom: a stream whose step fails ends with a backend_error event and [DONE]",
              st == 200 and ends_with_error(raw, "service_unavailable", "backend_error"))
        check("oom: the stream's tokens before the failed step were sent, none after",
              len(content_chunks(raw)) <= 2, "%d content chunks" % len(content_chunks(raw)))
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, max_tokens=40))
        err = error_of(raw)
        check("oom: a non-streaming request whose step fails gets a 503 backend_error body",
              st == 503 and err.get("type") == "service_unavailable" and err.get("code") == "backend_error" and
              "retry" in err.get("message", ""), "%d %r" % (st, raw[:200]))
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, max_tokens=12))
        ok = st == 200 and json.loads(raw)["usage"]["completion_tokens"] == 12
        check("oom: the server recovers: the next request is served in full", ok, "%d %r" % (st, raw[:200]))
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, stream=True, max_tokens=12))
        events, done = sse_events(raw)
        check("oom: and so is the next stream", st == 200 and done and not any("error" in e for e in events))
        check("oom: /health/ready stays 200", call(d, "/health/ready", None)[0] == 200)
        m = settled(d, mon)
        check("oom: /metrics counts the two failed steps",
              m.get("dsinfer_engine_step_failures_total") == "2", m.get("dsinfer_engine_step_failures_total"))
        check("oom: /metrics counts two 503 generation failures",
              m.get('dsinfer_generation_failures_total{status="503"}') == "2" and
              m.get('dsinfer_generation_failures_total{status="500"}') == "0")
        check("oom: the backend is not marked dead", m.get("dsinfer_backend_dead") == "0")
        check_clean("oom", m)
    finally:
        d.stop()


def notify_socket(work):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(work, "notify")
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def wait_notify(sock, d, word, timeout=60.0):
    """Messages received until one has the line word (inclusive); None if none in time."""
    got, end = [], time.time() + timeout
    while time.time() < end:
        try:
            m = sock.recv(4096).decode()
        except socket.timeout:
            if d.p.poll() is not None:
                return None
            continue
        got.append(m)
        if any(ln == word or ln.startswith(word) for ln in m.split("\n")):
            return got
    return None


def group_dead(work, keys, key, mon):
    sock, path = notify_socket(work)
    wd_usec = 400000  # the daemon pings every 200 ms
    d = daemon(work, keys, "3:dead", {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(wd_usec), "WATCHDOG_PID": ""})
    if not d.ok:
        check("dead: daemon starts", False)
        return
    try:
        check("dead: control: watchdog pings arrive while the backend works",
              wait_notify(sock, d, "WATCHDOG=1") is not None)
        check("dead: control: /health/live and /health/ready are 200 before",
              call(d, "/health/live", None)[0] == 200 and call(d, "/health/ready", None)[0] == 200)
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, stream=True, max_tokens=40))
        check("dead: the stream whose step kills the backend ends with a backend_error event and [DONE]",
              st == 200 and ends_with_error(raw, "service_unavailable", "backend_error"))
        st, raw = call(d, "/health/ready", None)
        check("dead: /health/ready answers 503 failed", st == 503 and json.loads(raw).get("status") == "failed",
              "%d %r" % (st, raw))
        st, raw = call(d, "/health/live", None)
        check("dead: /health/live answers 503 failed", st == 503 and json.loads(raw).get("status") == "failed",
              "%d %r" % (st, raw))
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, max_tokens=5))
        err = error_of(raw)
        check("dead: a new request gets 503 backend_failed",
              st == 503 and err.get("code") == "backend_failed", "%d %r" % (st, raw[:200]))
        st, raw = call(d, "/v1/chat/completions", key, dict(CHAT, stream=True, max_tokens=5))
        check("dead: a new stream gets 503 before its first byte",
              st == 503 and error_of(raw).get("code") == "backend_failed", "%d %r" % (st, raw[:200]))
        got = wait_notify(sock, d, "STATUS=backend failed")
        check("dead: systemd is told why (STATUS=backend failed ...)", got is not None)
        # The pinging thread sends that STATUS and stops pinging in the same
        # step, so any ping after it is a failure; five ping periods of silence
        # (1 s) is the bound within which a pinging daemon would have sent 5.
        after, end = [], time.time() + 5 * wd_usec / 2e6
        while time.time() < end:
            try:
                after.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        check("dead: the watchdog pings stop (systemd's WatchdogSec restarts the service)",
              not any("WATCHDOG=1" in m.split("\n") for m in after), after)
        m = settled(d, mon)
        check("dead: /metrics says the backend is dead and ready 0",
              m.get("dsinfer_backend_dead") == "1" and m.get("dsinfer_ready") == "0")
        check("dead: /metrics counts one failed step (no step runs after it)",
              m.get("dsinfer_engine_step_failures_total") == "1", m.get("dsinfer_engine_step_failures_total"))
        check_clean("dead", m)
    finally:
        d.stop()
        sock.close()


def main():
    if not os.access(BIN, os.X_OK) or not os.path.exists(os.path.join(MODEL, "config.json")):
        print("skip: no dsinfer binary or no %s" % MODEL)
        return 77
    if os.environ.get("DSI_TEST_HOOKS") != "1":
        print("skip: this build has no test hooks (DSI_TEST_HOOKS, on in sanitizer builds)")
        return 77
    with tempfile.TemporaryDirectory() as work:
        keys = os.path.join(work, "keys.json")
        key = add_key(keys, "fault", "user")
        mon = add_key(keys, "faultmon", "monitor")
        group_oom(work, keys, key, mon)
        group_dead(work, keys, key, mon)
    return dsitest.summary()


if __name__ == "__main__":
    sys.exit(main())
