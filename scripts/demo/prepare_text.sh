#!/usr/bin/env bash
# Extracts the King James Bible (public domain) from Debian's bible-kjv-text package
# into plain text, one verse per line without the "Ge1:1 " references, split into
# the training text and a held-out text (every 50th chapter) that training never sees.
#   usage: scripts/demo/prepare_text.sh OUTDIR   -> OUTDIR/{train.txt,heldout.txt}
set -euo pipefail
out=${1:?usage: prepare_text.sh OUTDIR}
command -v bible >/dev/null || { echo "needs the bible program and text: apt-get install bible-kjv" >&2; exit 1; }
mkdir -p "$out"
bible -f Gen1:1-Rev22:21 | awk -v train="$out/train.txt" -v held="$out/heldout.txt" '
  {
    ref = $1; sub(/^[^ ]+ /, "");
    ch = ref; sub(/:.*/, "", ch);                    # "Ge1"
    if (ch != last) { n++; last = ch; if (NR > 1) { print "" > (cur) } }
    cur = (n % 50 == 0) ? held : train;
    print > (cur);
  }'
wc -c "$out"/train.txt "$out"/heldout.txt >&2
