"""dsitest.py: what the Python suites that drive a real daemon share
(tests/hostile/hostile.py, tests/hostile/gen_hostile.py,
tests/integration/prefix_cache.py): the check/FAILS bookkeeping, API keys made
with `dsinfer keys add`, and a `dsinfer serve` on a free loopback port over TLS
that is waited for until it logs "ready: serving".

The suites import it with tests/lib on sys.path:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    import dsitest

Each suite passes its own model, backend and options; nothing here reads the
suite's globals. Standard library only.
"""
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

BIN = os.environ.get("DSI_BIN", "build/dsinfer")
FAILS = []  # names of the failed checks, in order; one list for the whole run

# The daemon's certificate is self-signed (kept in its state dir): clients skip verification.
CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def check(name, cond, detail=""):
    """Prints one ok/FAIL line (with detail on failure) and records a failure."""
    print(("ok   " if cond else "FAIL ") + name + ("" if cond or not detail else ": " + str(detail)))
    if not cond:
        FAILS.append(name)


def summary():
    """Prints the run's verdict; the exit status (0 all passed, 1 some failed)."""
    print("%d failed" % len(FAILS) if FAILS else "all passed")
    return 1 if FAILS else 0


def sse_events(b):
    """The JSON events of a stream body and whether it ends with [DONE]."""
    events = [e[len("data: "):] for e in b.decode(errors="replace").split("\n\n") if e.startswith("data: ")]
    done = bool(events) and events[-1] == "[DONE]"
    return [json.loads(e) for e in events if e != "[DONE]"], done


def ends_with_error(b, etype, code):
    """A stream that ends with exactly one error event of that type/code (with a message), then [DONE]."""
    events, done = sse_events(b)
    errs = [e for e in events if "error" in e]
    ok = done and len(errs) == 1 and events[-1] is errs[0] and errs[0]["error"].get("type") == etype and \
        errs[0]["error"].get("code") == code and errs[0]["error"].get("message")
    if not ok:
        print("     stream ends: done=%s last=%s" % (done, json.dumps(events[-1]) if events else None))
    return ok


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def add_key(keys, name, role, *extra):
    """A new key in the keys file `keys` (created if missing); raises when refused."""
    r = subprocess.run([BIN, "keys", "add", "--file", keys, "--name", name, "--role", role] + list(extra),
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("keys add: " + r.stderr)
    return r.stdout.strip()


class Daemon:
    """`dsinfer serve --model model --keys keys` plus args, on a free port, its
    output in work/log_name (default daemon-PORT.log) and its state in
    work/state. Waits up to wait_s for "ready: serving"; self.ok says whether it
    came. A daemon that did not come up prints its log (unless expect_ready is
    False). With check_exit, stop() also checks that a daemon that came up
    exits with status 0 (a sanitizer report at exit makes it non-zero)."""

    def __init__(self, work, model, keys, args=(), log_name=None, wait_s=20.0, expect_ready=True,
                 check_exit=False):
        self.port = free_port()
        self.log = os.path.join(work, log_name or "daemon-%d.log" % self.port)
        self.check_exit = check_exit
        cmd = [BIN, "serve", "--model", model, "--keys", keys, "--state-dir", os.path.join(work, "state"),
               "--listen", "127.0.0.1:%d" % self.port] + list(args)
        self.out = open(self.log, "w")
        self.p = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT)
        self.ok = False
        end = time.time() + wait_s
        while time.time() < end:
            if "ready: serving" in self.text():
                self.ok = True
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        if expect_ready and not self.ok:
            print(self.text())

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, timeout=10.0, start=0):
        """Whether the log (from offset start) matches the regex within timeout seconds."""
        end = time.time() + timeout
        while time.time() < end:
            if re.search(pattern, self.text()[start:]):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        """SIGTERM, then SIGKILL after 15 s."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()
        if self.check_exit and self.ok:
            if self.p.returncode != 0:
                print("\n".join(self.text().splitlines()[-30:]))
            check("daemon exits cleanly", self.p.returncode == 0, "status %d" % self.p.returncode)

    def post(self, path, key, body):
        """POST body as JSON; the parsed answer, or the list of data events of a stream."""
        req = urllib.request.Request("https://127.0.0.1:%d%s" % (self.port, path), data=json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + key,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=CTX, timeout=120) as r:
            raw = r.read().decode()
        if body.get("stream"):
            return [json.loads(ln[6:]) for ln in raw.split("\n") if ln.startswith("data: {")]
        return json.loads(raw)

    def metrics(self, key):
        """/metrics as {series: value text}."""
        req = urllib.request.Request("https://127.0.0.1:%d/metrics" % self.port,
                                     headers={"Authorization": "Bearer " + key})
        with urllib.request.urlopen(req, context=CTX, timeout=30) as r:
            out = {}
            for ln in r.read().decode().split("\n"):
                if ln and not ln.startswith("#"):
                    k, _, v = ln.rpartition(" ")
                    out[k] = v
            return out
