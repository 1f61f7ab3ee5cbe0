#!/usr/bin/env bash
# bench.sh: silo against OpenSSH (sshd + ChrootDirectory + internal-sftp) on
# this machine, in the same run, with ../shared/bench/compare.sh. Prints the
# table of medians and silo/OpenSSH ratios.
# Then, unless FSYNC_RUN=0, the put workloads again with silo's fsync = true,
# the cost of durable uploads; and, unless HASH_RUN=0, `ssh silo md5sum` (and
# the other checksum commands) against GNU coreutils on the same 1 GiB file.
# Then, unless ORDER_RUN=0, the cost of a full out-of-order budget; and, unless
# RSYNC_RUN=0, rsync over ssh against OpenSSH running the rsync binary.
# Then, unless STORE_RUN=0, silo with the PostgreSQL store against silo with
# users.toml (a throw-away PostgreSQL of Debian's package), and three nodes
# with one client each against one node with three clients. OPENSSH_RUN=0
# skips the first table.
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
if [[ ${OPENSSH_RUN:-1} != 0 ]]; then
  echo "## fsync = false (default)"
  compare
fi
if [[ ${FSYNC_RUN:-1} != 0 ]]; then
  start_silo true
  echo "## fsync = true (put workloads)"
  ONLY=${ONLY:-put} compare
fi

if [[ ${HASH_RUN:-1} != 0 ]]; then
  start_silo false
  echo "## checksums of a 1 GiB file: silo (over ssh) against GNU coreutils (local)"
  mkdir -p "$work/homes/bench"
  head -c $((1 << 30)) /dev/urandom >"$work/homes/bench/hash.bin"
  cat "$work/homes/bench/hash.bin" >/dev/null # both read from the page cache
  sshb() { ssh -p "$port" -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR bench@127.0.0.1 "$@"; }
  ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  printf '%-12s %10s %10s %12s\n' command silo_ms gnu_ms speed_ratio
  for c in md5sum sha256sum sha1sum sha512sum b2sum; do
    s=() g=()
    for ((i = 0; i < ${ROUNDS:-5}; i++)); do
      s+=("$(ms sshb "$c" hash.bin)")
      g+=("$(ms "$c" "$work/homes/bench/hash.bin")")
    done
    sm=$(median "${s[@]}") gm=$(median "${g[@]}")
    printf '%-12s %10d %10d %12.2f\n' "$c" "$sm" "$gm" "$(awk -v s="$sm" -v g="$gm" 'BEGIN{print g / s}')"
  done
fi

if [[ ${ORDER_RUN:-1} != 0 ]]; then
  # Writes ahead of a gap held in memory, against written at once behind a
  # mark file (what a writer gets once a budget is full).
  echo "## out-of-order writes: held in memory against behind a mark (vfs)"
  go test -run '^$' -bench BenchmarkOutOfOrderWrites -benchtime "${ROUNDS:-5}x" ./vfs |
    awk '/^Benchmark/ {split($1, n, "/"); sub(/-[0-9]+$/, "", n[2]); mbs[n[2]] = $(NF-1)}
      END {printf "%-10s %10s %10s %8s\n", "workload", "held_MB/s", "mark_MB/s", "ratio";
           printf "%-10s %10.0f %10.0f %8.2f\n", "64MiB", mbs["held"], mbs["spilled"], mbs["spilled"] / mbs["held"]}'
fi

if [[ ${RSYNC_RUN:-1} != 0 ]]; then
  # rsync over ssh: silo's built-in server against OpenSSH's sshd running
  # the rsync binary (benchexec has a shell), alternated, a fresh target
  # each time so that all of the data moves.
  start_silo false
  echo "## rsync -a -e 'ssh -c aes128-gcm@openssh.com': silo against OpenSSH + rsync"
  src=$work/rsync-src
  mkdir -p "$src/small" "$work/homes/bench"
  head -c $((1 << 30)) /dev/urandom >"$src/big"
  for i in $(seq 2000); do head -c 4096 /dev/urandom >"$src/small/f$i"; done
  rsh() { echo "ssh -p $1 -i $key -c aes128-gcm@openssh.com -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"; }
  ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  run() { # run SERVER WORKLOAD -> milliseconds
    local p dest home
    if [[ $1 == silo ]]; then p=$port dest=bench@127.0.0.1 home=$work/homes/bench
    else p=2222 dest=benchexec@127.0.0.1 home=/home/benchexec; fi
    rm -rf "$home/rs" "$work/rsync-back" && mkdir -p "$home/rs" "$work/rsync-back"
    [[ $1 == openssh ]] && chown benchexec: "$home/rs"
    case $2 in
      push_1GiB) ms rsync -a -e "$(rsh "$p")" "$src/big" "$dest:rs/" ;;
      push_2000x4KiB) ms rsync -a -e "$(rsh "$p")" "$src/small/" "$dest:rs/" ;;
      pull_1GiB) cp "$src/big" "$home/rs/"; [[ $1 == openssh ]] && chown -R benchexec: "$home/rs"
        ms rsync -a -e "$(rsh "$p")" "$dest:rs/big" "$work/rsync-back/" ;;
      pull_2000x4KiB) cp -r "$src/small/." "$home/rs/"; [[ $1 == openssh ]] && chown -R benchexec: "$home/rs"
        ms rsync -a -e "$(rsh "$p")" "$dest:rs/" "$work/rsync-back/" ;;
    esac
  }
  # The ratio of the medians, and the lowest and highest ratio of one
  # round's pair: how noisy the machine was.
  printf '%-16s %10s %10s %12s %14s\n' workload silo_ms openssh_ms speed_ratio round_ratios
  for w in push_1GiB pull_1GiB push_2000x4KiB pull_2000x4KiB; do
    s=() o=() r=()
    for ((i = 0; i < ${ROUNDS:-5}; i++)); do
      if ((i % 2)); then o+=("$(run openssh $w)"); s+=("$(run silo $w)")
      else s+=("$(run silo $w)"); o+=("$(run openssh $w)"); fi
      r+=("$(awk -v s="${s[i]}" -v o="${o[i]}" 'BEGIN{printf "%.2f", o / s}')")
    done
    sm=$(median "${s[@]}") om=$(median "${o[@]}")
    lo=$(printf '%s\n' "${r[@]}" | sort -n | head -1) hi=$(printf '%s\n' "${r[@]}" | sort -n | tail -1)
    printf '%-16s %10d %10d %12.2f %14s\n' "$w" "$sm" "$om" "$(awk -v s="$sm" -v o="$om" 'BEGIN{print o / s}')" "$lo-$hi"
  done
fi

if [[ ${STORE_RUN:-1} != 0 ]]; then
  # A throw-away PostgreSQL, as nobody (it refuses root), on a Unix socket.
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pgdir=$(mktemp -d /tmp/silo-bench-pg.XXXXXX)
  chown nobody "$pgdir"
  pg() { runuser -u nobody -- "$pgbin/$1" "${@:2}"; }
  pg initdb -D "$pgdir/data" -U postgres -A trust --no-sync >/dev/null
  pg pg_ctl -D "$pgdir/data" -l "$pgdir/log" -w start \
    -o "-c listen_addresses='' -c unix_socket_directories=$pgdir" >/dev/null
  nodes=()
  stop_store() {
    for p in "${nodes[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    pg pg_ctl -D "$pgdir/data" -m immediate -w stop >/dev/null || true
    rm -rf "$pgdir"
  }
  trap 'stop_store; cleanup' EXIT
  node() { # node N: a PostgreSQL-store silo on port+10+N, homes shared
    cat >"$work/pg$1.toml" <<CONF
listen = "127.0.0.1:$((port + 10 + $1))"
homes = "pghomes"
host_keys = "hostkeys"
users = "unused.toml"
[store]
kind = "postgres"
dsn = "host=$pgdir user=postgres dbname=postgres"
CONF
    [[ $1 == 0 ]] && "$root/silo" user add bench --key "$key.pub" --config "$work/pg0.toml" >/dev/null
    "$root/silo" serve --config "$work/pg$1.toml" 2>"$work/pg$1.log" &
    nodes+=($!)
    for _ in $(seq 100); do grep -q "listening for account changes" "$work/pg$1.log" && break; sleep 0.1; done
  }
  node 0
  start_silo false
  echo "## PostgreSQL store against users.toml: one node each"
  "$shared/bench/compare.sh" \
    "postgres=127.0.0.1:$((port + 10)):bench:$key:/" \
    "usersfile=127.0.0.1:$port:bench:$key:/" |
    { [[ -n ${STORE_ONLY:-} ]] && grep -E "workload|$STORE_ONLY" || cat; }
  node 1
  node 2
  echo "## 3 x 256 MiB put at once: three nodes, one client each, against one node with three clients"
  src=/dev/shm/silo-bench-256
  head -c $((256 << 20)) /dev/urandom >"$src"
  put3() { # put3 PORT PORT PORT -> milliseconds for all three
    local s e i=0
    s=$(date +%s%N)
    for p in "$@"; do
      i=$((i + 1))
      echo "put $src p$i" | sftp -q -b - -P "$p" -i "$key" -c aes128-gcm@openssh.com -o BatchMode=yes \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR bench@127.0.0.1 >/dev/null &
    done
    wait
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
  }
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  t3=() t1=()
  for ((i = 0; i < ${ROUNDS:-5}; i++)); do
    t3+=("$(put3 $((port + 10)) $((port + 11)) $((port + 12)))")
    t1+=("$(put3 $((port + 10)) $((port + 10)) $((port + 10)))")
  done
  a=$(median "${t3[@]}") b=$(median "${t1[@]}")
  printf '%-24s %10s %10s %8s\n' workload 3nodes_ms 1node_ms ratio
  printf '%-24s %10d %10d %8.2f\n' put_3x256MiB "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{print b / a}')"
  rm -f "$src"
fi
