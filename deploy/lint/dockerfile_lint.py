#!/usr/bin/env python3
"""dockerfile_lint.py: hadolint-style checks of a Dockerfile, by script
(hadolint is not packaged in Debian 12). Rule ids follow hadolint's where one
exists (DL...), DSI... are ours. Prints one line per finding,
"FILE:LINE RULE message", and exits 1 when there is any, 2 on usage.

  deploy/lint/dockerfile_lint.py Dockerfile [...]
"""
import json
import re
import sys

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY)", re.I)


def instructions(text):
    """(line number, INSTRUCTION, arguments) with continuation lines joined."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        parts = buf.strip().split(None, 1)
        out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf = ""
    return out


def lint(path):
    text = open(path, encoding="utf-8").read()
    ins = instructions(text)
    bad = []

    def f(n, rule, msg):
        bad.append(f"{path}:{n} {rule} {msg}")

    stages, users, shell_pipefail = [], [], False
    for n, op, arg in ins:
        if op == "FROM":
            image = arg.split()[0]
            if image.lower() != "scratch" and "$" not in image and (":" not in image.split("/")[-1] and "@" not in image):
                f(n, "DL3006", f"image {image} has no tag: pin it")
            if image.endswith(":latest"):
                f(n, "DL3007", f"image {image} uses :latest: pin a version")
            stages.append(n)
            users.append(None)
            shell_pipefail = False
        elif op == "USER":
            users[-1] = (n, arg.strip())
        elif op == "SHELL":
            shell_pipefail = "pipefail" in arg
        elif op == "RUN":
            if re.search(r"\bsudo\b", arg):
                f(n, "DL3004", "do not use sudo in RUN")
            if re.search(r"apt-get\s+(dist-)?upgrade", arg):
                f(n, "DL3005", "do not apt-get upgrade in an image build")
            if re.search(r"apt-get\s+install", arg):
                if "--no-install-recommends" not in arg:
                    f(n, "DL3015", "apt-get install without --no-install-recommends")
                if not re.search(r"apt-get\s+install\s+(\S+\s+)*-y|apt-get\s+-y|--yes|-qq?y", arg):
                    f(n, "DL3014", "apt-get install without -y")
                if "rm -rf /var/lib/apt/lists" not in arg:
                    f(n, "DL3009", "apt lists not removed in the same RUN")
            if re.search(r"(curl|wget)[^|;&]*\|\s*(ba|z|da)?sh\b", arg):
                f(n, "DSI001", "piping a download into a shell")
            if "|" in arg.replace("||", "") and not shell_pipefail:
                f(n, "DL4006", "RUN with a pipe needs SHELL [..., \"-o\", \"pipefail\", ...] first")
        elif op in ("CMD", "ENTRYPOINT"):
            try:
                ok = isinstance(json.loads(arg), list)
            except ValueError:
                ok = False
            if not ok:
                f(n, "DL3025", f"{op} in shell form: use the JSON (exec) form so signals reach the process")
        elif op == "ADD" and not re.match(r"\s*(https?://|\S+\.(tar|tgz|tar\.\w+)\b)", arg):
            f(n, "DL3020", "use COPY for local files")
        elif op == "WORKDIR" and not arg.strip().startswith(("/", "$")):
            f(n, "DL3000", "WORKDIR must be absolute")
        elif op in ("ENV", "ARG"):
            name = re.split(r"[=\s]", arg.strip(), maxsplit=1)[0]
            if SECRET_NAME.search(name):
                f(n, "DSI002", f"{op} {name} looks like a secret: pass secrets at run time, not in the image")
        elif op == "MAINTAINER":
            f(n, "DL4000", "MAINTAINER is deprecated")
    if not stages:
        f(1, "DSI003", "no FROM")
        return bad
    if len(stages) < 2:
        f(stages[0], "DSI004", "single stage: build in one stage, run in a slim one")
    last = users[-1]
    if last is None:
        f(stages[-1], "DL3002", "the final stage never sets USER: it would run as root")
    elif last[1].split(":")[0] in ("root", "0"):
        f(last[0], "DL3002", "the final stage runs as root")
    return bad


def main(argv):
    if len(argv) < 2:
        print("usage: dockerfile_lint.py Dockerfile [...]", file=sys.stderr)
        return 2
    bad = [b for p in argv[1:] for b in lint(p)]
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
