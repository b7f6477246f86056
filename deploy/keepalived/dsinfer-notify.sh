#!/bin/sh
# dsinfer-notify.sh TYPE NAME STATE PRIORITY: keepalived notify hook. Logs
# every VRRP transition to the journal (tag dsinfer-vrrp) and, when
# DSINFER_VRRP_STATE_FILE is set, writes the state there (monitoring,
# tests). It never touches dsinfer: a standby keeps serving warm so a
# failover needs no model load.
state=$3
logger -t dsinfer-vrrp "VRRP $1 $2 -> $state (priority ${4:-?})" 2>/dev/null || true
if [ -n "${DSINFER_VRRP_STATE_FILE:-}" ]; then
    printf '%s %s\n' "$(date +%s.%N)" "$state" >>"$DSINFER_VRRP_STATE_FILE"
fi
exit 0
