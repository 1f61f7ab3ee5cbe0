#!/usr/bin/env bash
# Runs each fuzz target for FUZZTIME and prints how many inputs it ran, so
# that a target too slow to fuzz shows. The full output of a failing target
# is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in vfs:FuzzRel vfs:FuzzLinks users:FuzzParse users:FuzzVerifyPassword sshd:FuzzSFTPStream sshd:FuzzClientCiphers rsync:FuzzServer; do
  pkg=${target%%:*} name=${target#*:}
  if ! "$GO" test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZTIME" "./$pkg" >"$log" 2>&1; then
    cat "$log"
    echo "$name: FAILED" >&2
    exit 1
  fi
  # The last progress line: "fuzz: elapsed: 60s, execs: 123456 (2000/sec), ..."
  awk -v name="$name" '/^fuzz: elapsed:/ { e = $3; x = $5 } END {
    sub(/s,$/, "", e); sub(/,$/, "", x)
    printf "%-22s %9d executions in %ss (%d/s)\n", name, x, e, (e > 0 ? x / e : 0) }' "$log"
done
