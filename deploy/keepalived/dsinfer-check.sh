#!/bin/sh
# dsinfer-check.sh URL [SECONDS]: keepalived track script. Exit 0 when dsinfer
# answers URL (its /health/ready) with 200 within SECONDS (default 0.8),
# non-zero otherwise. -k: the probe
# goes to 127.0.0.1, which the serving certificate need not name.
exec curl -fsk --max-time "${2:-0.8}" -o /dev/null "$1"
