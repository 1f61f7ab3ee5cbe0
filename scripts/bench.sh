#!/usr/bin/env bash
# bench.sh: silo against OpenSSH (sshd + ChrootDirectory + internal-sftp) on
# this machine, in the same run, with ../shared/bench/compare.sh. Prints the
# table of medians and silo/OpenSSH ratios.
# Then, unless FSYNC_RUN=0, the put workloads again with silo's fsync = true,
# the cost of durable uploads.
#   Env: ROUNDS (default 5), ONLY (workload regex), SHARED (default ../shared),
#        SILO_BENCH_PORT (default 2023); anything compare.sh takes.
# Needs root (the reference sshd) and a built ./silo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=${SHARED:-$root/../shared}
port=${SILO_BENCH_PORT:-2023}

"$shared/bench/openssh-up.sh" >/dev/null
key=/tmp/ossh/id_ed25519

work=$(mktemp -d /var/tmp/silo-bench.XXXXXX)
cleanup() {
  [[ -n ${pid:-} ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

start_silo() { # start_silo FSYNC
  [[ -n ${pid:-} ]] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  cat >"$work/config.toml" <<CONF
listen = "127.0.0.1:$port"
homes = "homes"
host_keys = "hostkeys"
users = "users.toml"
fsync = $1
CONF
  [[ -f $work/users.toml ]] || "$root/silo" user add bench --key "$key.pub" --config "$work/config.toml" >/dev/null
  : >"$work/silo.log"
  "$root/silo" serve --config "$work/config.toml" 2>"$work/silo.log" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/silo.log" && break; sleep 0.1; done
  grep -q "listening on" "$work/silo.log" || { cat "$work/silo.log" >&2; exit 1; }
}

compare() {
  "$shared/bench/compare.sh" \
    "silo=127.0.0.1:$port:bench:$key:/" \
    "openssh=127.0.0.1:2222:benchuser:$key:/data"
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, silo $("$root/silo" version | cut -d' ' -f2), $(ssh -V 2>&1 | cut -d, -f1)" >&2
start_silo false
echo "## fsync = false (default)"
compare
if [[ ${FSYNC_RUN:-1} != 0 ]]; then
  start_silo true
  echo "## fsync = true (put workloads)"
  ONLY=${ONLY:-put} compare
fi
