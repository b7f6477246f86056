#!/usr/bin/env python3
"""hostile.py: the hostile-client suite (issue 27). Starts the real daemon on the
CPU backend with the tiny model on a free loopback port, over TLS, and attacks it
the way an outside client can: weak key exchange, broken certificate material,
request smuggling, slowloris and pre-auth memory. Each check fails on a daemon
without the matching defence; each also has a positive control, so a daemon that
refuses everything does not pass.

    DSI_BIN=build/dsinfer tests/hostile/hostile.py GROUP
    GROUP: tls | smuggle | slow   (one ctest each)

Exit 0 pass, 1 fail, 77 skipped (no binary, model or openssl).
Needs only python3's standard library and the openssl command line tool.
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import dsitest  # noqa: E402
from dsitest import BIN, check  # noqa: E402

MODEL = "tests/golden/models/tiny-chat"


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, **kw)


class Daemon(dsitest.Daemon):
    """The tiny model on the CPU backend in f32, logging at info, its log in work/NAME.log."""

    def __init__(self, work, name, args, keys, expect_ready=True):
        super().__init__(work, MODEL, keys, ["--backend", "cpu", "--dtype", "f32", "--log-level", "info"] + args,
                         log_name=name + ".log", wait_s=15, expect_ready=expect_ready)


def client_ctx(ca=None, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_connect(port, ctx, src="127.0.0.1", timeout=5.0):
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    raw.bind((src, 0))
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def exchange(port, data, ctx=None, wait=3.0, src="127.0.0.1"):
    """Sends raw bytes over TLS; returns (bytes received, closed by server?, seconds)."""
    t0 = time.time()
    s = tls_connect(port, ctx or client_ctx(), src)
    s.settimeout(wait)
    s.sendall(data)
    out, closed = b"", False
    try:
        while True:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            out += d
    except (socket.timeout, TimeoutError):
        pass
    except (ConnectionResetError, ssl.SSLError, OSError):
        closed = True
    s.close()
    return out, closed, time.time() - t0


def statuses(out):
    return [int(m) for m in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", out, re.M)]


def request(port, method, path, key=None, body=None, ctx=None, headers=(), wait=10):
    """One well-formed request on its own connection; returns (status, body bytes)."""
    h = "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" % (method, path)
    if key:
        h += "Authorization: Bearer %s\r\n" % key
    for x in headers:
        h += x + "\r\n"
    b = body.encode() if isinstance(body, str) else (body or b"")
    if body is not None:
        h += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(b)
    try:
        out, _, _ = exchange(port, h.encode() + b"\r\n" + b, ctx=ctx, wait=wait)
    except (ssl.SSLError, OSError) as e:
        return -1, str(e).encode()
    st = statuses(out)
    return (st[0] if st else 0), out.split(b"\r\n\r\n", 1)[-1]


# ---- certificates (openssl CLI) -------------------------------------------------

def ec_key(path):
    sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


def self_signed(work, name, key):
    cert = os.path.join(work, name + ".crt")
    sh("openssl", "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
       "-addext", "subjectAltName=IP:127.0.0.1")
    return cert


def issue(work, name, ca, ca_key, eku):
    key, csr, crt, ext = (os.path.join(work, name + s) for s in (".key", ".csr", ".crt", ".ext"))
    ec_key(key)
    sh("openssl", "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + name)
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n" % eku)
    sh("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
       "-days", "2", "-extfile", ext)
    return crt, key


def s_client(port, *extra):
    """openssl s_client handshake; True when a TLS 1.3 session was established."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_3"] + list(extra),
                       input="", capture_output=True, text=True, timeout=30)
    return "New, TLSv1.3" in r.stdout, r.stdout + r.stderr


def fingerprint(port):
    try:
        s = tls_connect(port, client_ctx())
    except (ssl.SSLError, OSError):
        return None
    der = s.getpeercert(binary_form=True)
    s.close()
    import hashlib
    return hashlib.sha256(der).hexdigest()


# ---- groups -------------------------------------------------------------------

def group_tls(work, keys, key):
    # Finding 1: finite-field key exchange (~500 ms of server CPU for ffdhe8192)
    # is refused; the elliptic-curve groups work.
    d = Daemon(work, "tls", [], keys)
    try:
        for g in ("X25519", "P-256", "P-384"):
            ok, _ = s_client(d.port, "-groups", g)
            check("tls: handshake with only %s succeeds" % g, ok)
        for g in ("ffdhe2048", "ffdhe8192"):
            ok, out = s_client(d.port, "-groups", g)
            check("tls: handshake offering only %s is refused" % g, not ok, "the handshake succeeded")
        st, _ = request(d.port, "GET", "/v1/models", key)
        check("tls: a normal request still works", st == 200, str(st))
    finally:
        d.stop()

    # Finding 2: a key that does not belong to the certificate is refused at start.
    ka, kb = os.path.join(work, "a.key"), os.path.join(work, "b.key")
    ec_key(ka)
    ec_key(kb)
    ca_ = self_signed(work, "a", ka)
    d = Daemon(work, "mismatch", ["--tls-cert", ca_, "--tls-key", kb], keys, expect_ready=False)
    try:
        d.p.wait(20)
    except subprocess.TimeoutExpired:
        pass
    check("tls: mismatched certificate and key stop the start", not d.ok and d.p.poll() not in (None, 0),
          "it started")
    check("tls: the start error says the key does not belong to the certificate",
          "does not belong" in d.text() or "does not match" in d.text())
    d.stop()

    # ... and on SIGHUP the old pair stays in force, with the reason logged.
    cert, tkey = os.path.join(work, "live.crt"), os.path.join(work, "live.key")
    shutil.copy(ca_, cert)
    shutil.copy(ka, tkey)
    d = Daemon(work, "reload", ["--tls-cert", cert, "--tls-key", tkey], keys)
    try:
        fp0 = fingerprint(d.port)
        shutil.copy(kb, tkey)
        n = len(d.text())
        d.p.send_signal(signal.SIGHUP)
        check("tls: reload with a mismatched key finishes", d.wait_log("reload done", start=n))
        check("tls: reload with a mismatched key is refused and says why",
              re.search("TLS certificate kept as it was: .*(does not belong|does not match)", d.text()[n:]) is not None,
              d.text()[n:].strip().splitlines()[-2])
        st, _ = request(d.port, "GET", "/health/live")
        check("tls: handshakes still work after the refused reload", st == 200, str(st))
        check("tls: the old certificate is still served", fp0 is not None and fingerprint(d.port) == fp0)
        # Positive control: a matching new pair (RSA this time) is taken.
        kc = os.path.join(work, "c.key")
        sh("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", kc)
        cc = self_signed(work, "c", kc)
        shutil.copy(cc, cert)
        shutil.copy(kc, tkey)
        n = len(d.text())
        d.p.send_signal(signal.SIGHUP)
        d.wait_log("reload done", start=n)
        fp1 = fingerprint(d.port)
        check("tls: a matching new pair is taken on reload", fp1 is not None and fp1 != fp0)
    finally:
        d.stop()

    # Finding 8 (mTLS): a client certificate must allow clientAuth.
    cak = os.path.join(work, "ca.key")
    ec_key(cak)
    ca = os.path.join(work, "ca.crt")
    sh("openssl", "req", "-x509", "-new", "-key", cak, "-out", ca, "-days", "2", "-subj", "/CN=test-ca")
    good = issue(work, "svc-client", ca, cak, "clientAuth")
    bad = issue(work, "svc-server", ca, cak, "serverAuth")
    mkeys = os.path.join(work, "mtls-keys.json")
    with open(mkeys, "w") as f:
        json.dump({"version": 1, "keys": [],
                   "clients": [{"cn": "svc-client", "name": "svc-client", "role": "user"},
                               {"cn": "svc-server", "name": "svc-server", "role": "user"}]}, f)
    os.chmod(mkeys, 0o600)
    d = Daemon(work, "mtls", ["--tls-client-ca", ca, "--tls-require-client-cert", "true"], mkeys)
    try:
        st, _ = request(d.port, "GET", "/v1/models", ctx=client_ctx(cert=good[0], key=good[1]))
        check("mtls: a clientAuth certificate is accepted", st == 200, str(st))
        st, _ = request(d.port, "GET", "/v1/models", ctx=client_ctx(cert=bad[0], key=bad[1]))
        check("mtls: a serverAuth-only certificate is refused", st in (-1, 401, 403), str(st))
    finally:
        d.stop()


def group_smuggle(work, keys, key):
    # Finding 3: every request a proxy could frame differently is refused with 400
    # (501 for an unknown transfer coding) and the connection is closed, so nothing
    # after it on the connection runs as a request of its own.
    d = Daemon(work, "smuggle", [], keys)
    try:
        A = ("Authorization: Bearer %s\r\n" % key).encode()
        body = b'{"text":"hi"}'
        tok = b"POST /v1/tokenize HTTP/1.1\r\nHost: localhost\r\n" + A + b"Content-Type: application/json\r\n"
        smug = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + A + b"\r\n"
        models = b"GET /v1/models HTTP/1.1\r\n"

        # Positive controls: one keep-alive connection runs two requests; chunked works.
        out, closed, _ = exchange(d.port, tok + b"Content-Length: %d\r\n\r\n" % len(body) + body + smug, wait=2)
        check("smuggle: control: two pipelined requests on one connection both run", statuses(out) == [200, 200],
              str(statuses(out)))
        out, _, _ = exchange(d.port, tok + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body +
                             b"\r\n0\r\n\r\n", wait=2)
        check("smuggle: control: a chunked body works", statuses(out)[:1] == [200], str(statuses(out)))

        cases = [
            ("two Content-Length", tok + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
             % (len(body), len(body) + len(smug)) + body + smug, 400),
            ("Content-Length + chunked", tok + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
             % (len(body) + 5) + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" + smug, 400),
            ("'Transfer-Encoding :'", tok + b"Content-Length: %d\r\nTransfer-Encoding : chunked\r\n\r\n"
             % len(body) + body + smug, 400),
            ("bare LF line ends", models.replace(b"\r\n", b"\n") + b"Host: localhost\n" +
             A.replace(b"\r\n", b"\n") + b"\n" + smug, 400),
            ("bare LF on one header", models + b"Host: localhost\nX-A: b\r\n" + A + b"\r\n" + smug, 400),
            ("bare CR in a value", models + b"Host: localhost\r\nX-A: a\rb\r\n" + A + b"\r\n" + smug, 400),
            ("space in a header name", models + b"Host: localhost\r\nX A: b\r\n" + A + b"\r\n" + smug, 400),
            ("folded header", models + b"Host: localhost\r\nX-A: a\r\n b\r\n" + A + b"\r\n" + smug, 400),
            ("missing Host", models + A + b"\r\n" + smug, 400),
            ("duplicate Host", models + b"Host: localhost\r\nHost: evil\r\n" + A + b"\r\n" + smug, 400),
            ("Transfer-Encoding: gzip", tok + b"Transfer-Encoding: gzip\r\n\r\n" + body, 501),
            ("space in the request target", b"GET /v1/mo dels HTTP/1.1\r\nHost: localhost\r\n" + A + b"\r\n", 400),
            ("%00 in the path", b"GET /v1/models%00xyz HTTP/1.1\r\nHost: localhost\r\n" + A + b"\r\n", 400),
        ]
        for name, raw, want in cases:
            out, closed, dt = exchange(d.port, raw, wait=3)
            st = statuses(out)
            check("smuggle: %s -> %d, one response, closed at once" % (name, want),
                  st == [want] and closed and dt < 2.5, "statuses %s, closed %s, %.1f s" % (st, closed, dt))
        st, _ = request(d.port, "GET", "/health/live")
        check("smuggle: the daemon still answers afterwards", st == 200, str(st))
    finally:
        d.stop()


def known_opts(*pairs):
    """Arguments for options this binary knows; an older one runs without them
    (so that running the suite against it shows which defences it lacks)."""
    helptext = sh(BIN, "serve", "--help").stdout + sh(BIN, "serve", "--help").stderr
    out = []
    for flag, val in pairs:
        if flag in helptext:
            out += [flag, val]
        else:
            print("note: %s is not an option of this binary" % flag)
    return out


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def group_slow(work, keys, key):
    # Finding 5: slowloris and pre-auth memory.
    args = ["--client-timeout-s", "5", "--max-body-bytes", "4M", "--max-connections", "32"] + known_opts(
        ("--request-read-timeout-s", "2"), ("--max-connections-per-ip", "12"), ("--http-threads", "2"))
    d = Daemon(work, "slow", args, keys)
    try:
        hdr = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        chat = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}'

        # The key is checked on the headers: 401 at once, before any body byte.
        out, closed, dt = exchange(d.port, (hdr + "Content-Length: 1000000\r\n\r\n").encode(), wait=3)
        check("slow: no key, body not sent yet -> 401 at once, closed", statuses(out) == [401] and closed and dt < 2,
              "statuses %s, closed %s, %.1f s" % (statuses(out), closed, dt))
        out, _, _ = exchange(d.port, (hdr + "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n").encode(),
                             wait=2)
        check("slow: no key, Expect: 100-continue -> 401 and no 100 Continue", statuses(out) == [401],
              str(statuses(out)))
        # Control: with a key, 100 Continue, then the answer.
        s = tls_connect(d.port, client_ctx())
        s.sendall((hdr + "Authorization: Bearer %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
                   "Connection: close\r\n\r\n" % (key, len(chat))).encode())
        s.settimeout(5)
        first = s.recv(4096)
        s.sendall(chat)
        rest = b""
        try:
            while True:
                x = s.recv(65536)
                if not x:
                    break
                rest += x
        except (socket.timeout, ssl.SSLError, OSError):
            pass
        s.close()
        check("slow: control: with a key, 100 Continue then 200", statuses(first) == [100] and
              statuses(rest) == [200], "%s then %s" % (statuses(first), statuses(rest)))

        # Unauthenticated uploads held one byte short pin no memory.
        rss0 = rss_kb(d.p.pid)
        socks = []
        big = b"x" * (2 * 1024 * 1024 - 1)
        for _ in range(24):
            s = tls_connect(d.port, client_ctx())
            try:
                s.sendall((hdr + "Content-Length: %d\r\n\r\n" % (len(big) + 1)).encode() + big)
            except (ssl.SSLError, OSError):
                pass
            socks.append(s)
        time.sleep(0.5)
        grown = (rss_kb(d.p.pid) - rss0) / 1024.0
        for s in socks:
            s.close()
        # Pinning the bodies costs ~48 MB (measured +43 MB before the fix). Under ASan
        # every allocation carries redzones and freed memory sits in quarantine, which
        # adds a few MB for 24 TLS connections: the bound doubles there, still well
        # under what pinning costs.
        bound = 32 if os.environ.get("DSI_TEST_SANITIZED") == "1" else 16
        check("slow: 24 unauthenticated 2 MiB uploads held one byte short pin < %d MB" % bound, grown < bound,
              "RSS grew %.0f MB" % grown)

        # A header dripped a byte at a time is cut at the whole-request deadline (2 s),
        # though each byte comes well within the idle timeout (5 s).
        s = tls_connect(d.port, client_ctx())
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Drip: ")
        t0, alive = time.time(), True
        while alive and time.time() - t0 < 7:
            time.sleep(0.5)
            try:
                s.sendall(b"a")
                s.settimeout(0.01)
                if s.recv(1) == b"":
                    alive = False
            except (socket.timeout, ssl.SSLWantReadError):
                pass
            except (ssl.SSLError, OSError):
                alive = False
        s.close()
        dt = time.time() - t0
        check("slow: a dripped header is cut at request_read_timeout_s", not alive and dt < 4.5,
              "still open after %.1f s" % dt if alive else "closed after %.1f s" % dt)

        # Per-address limit: 12 connections from 127.0.0.1 are the most; another
        # address still gets in.
        held = [tls_connect(d.port, client_ctx()) for _ in range(12)]
        st, _ = request(d.port, "GET", "/health/live")
        check("slow: a 13th connection from one address is refused", st != 200, str(st))
        try:
            st, _ = exchange(d.port, b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                             src="127.0.0.2")[0], None
            st = statuses(st)[:1]
        except OSError as e:
            st = str(e)
        check("slow: another address still gets in", st == [200], str(st))
        for s in held:
            s.close()
        time.sleep(0.3)

        # Idle sockets from many addresses (max_connections 32) do not starve a new
        # client: near the limit, connections without a request are closed.
        idle = []
        for i in range(32):
            try:
                r = socket.socket()
                r.bind(("127.0.0.%d" % (10 + i % 8), 0))
                r.connect(("127.0.0.1", d.port))
                idle.append(r)
            except OSError:
                pass
        time.sleep(1.8)
        t0 = time.time()
        st, _ = request(d.port, "GET", "/health/live", wait=2.5)
        dt = time.time() - t0
        check("slow: 32 idle sockets do not lock out a new client (answer within 2.5 s)", st == 200 and dt < 2.5,
              "%s after %.1f s (%d sockets connected)" % (st, dt, len(idle)))
        for r in idle:
            r.close()
    finally:
        d.stop()


GROUPS = {"tls": group_tls, "smuggle": group_smuggle, "slow": group_slow}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in GROUPS:
        print("usage: hostile.py " + "|".join(GROUPS))
        return 2
    if not os.access(BIN, os.X_OK):
        skip("no dsinfer binary at " + BIN)
    if not os.path.exists(os.path.join(MODEL, "tokenizer.json")):
        skip("no model at " + MODEL)
    if not shutil.which("openssl"):
        skip("openssl not installed")
    work = tempfile.mkdtemp(prefix="dsinfer-hostile.")
    try:
        keys = os.path.join(work, "keys.json")
        key = dsitest.add_key(keys, "alice", "user")
        GROUPS[sys.argv[1]](work, keys, key)
    finally:
        if os.environ.get("KEEP") == "1":
            print("kept " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return dsitest.summary()


if __name__ == "__main__":
    sys.exit(main())
