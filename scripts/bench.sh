#!/usr/bin/env bash
# bench.sh: silo against OpenSSH (sshd + ChrootDirectory + internal-sftp) on
# this machine, in the same run, with ../shared/bench/compare.sh. Prints the
# table of medians and silo/OpenSSH ratios.
# Then, unless FSYNC_RUN=0, the put workloads again with silo's fsync =
# true, the cost of durable uploads.
# Then, unless CPU_RUN=0, the SFTP workloads again, one sftp command at a
# time, alternated, pinned (server on core 0, client on core 1) and
# unpinned, with the CPU time of server and client per GiB besides MB/s
# (cpuacct cgroups; the reference sshd is a private instance on
# OSSH_CPU_PORT, default 2224, so that nobody else's sessions count).
# Then, unless HASH_RUN=0, `ssh silo md5sum` (and the other checksum
# commands) against GNU coreutils on the same 1 GiB file; unless
# ORDER_RUN=0, the cost of a full out-of-order budget; and, unless
# RSYNC_RUN=0, rsync over ssh against OpenSSH running the rsync binary.
# Then, unless IDLE_RUN=0, what idle SFTP sessions cost silo (RSS and
# goroutines per session at IDLE_SESSIONS, default 500,1000, 10 per
# connection, internal/idlebench); unless SETUP_RUN=0, session setup:
# SETUP_LOGINS (default 20) sequential sftp logins that run one command
# (ls), silo's time over OpenSSH's.
# Then, unless STORE_RUN=0, silo with the PostgreSQL store against silo with
# users.toml (a throw-away PostgreSQL of Debian's package), one sftp command
# at a time, alternated per workload, with the CPU per GiB of each node and
# of the database (cpuacct cgroups) and the database's statements and
# commits per workload (pg_stat_statements); and three nodes with one
# client each against one node with three clients, with how many cores
# they kept busy. OPENSSH_RUN=0 skips the first table.
#   Env: ROUNDS (default 5), ONLY (workload regex), SHARED (default ../shared),
#        SILO_BENCH_PORT (default 2023); anything compare.sh takes;
#        CPU_ONLY (workload regex of the CPU run), PIN (both, 1 or 0),
#        SILO_BASE (another silo binary, measured beside this one in the
#        CPU run, on SILO_BASE_PORT, default 2033); STORE_ONLY (workload
#        regex of the store run).
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

start_silo() { # start_silo FSYNC [MORE_CONFIG]
  [[ -n ${pid:-} ]] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  cat >"$work/config.toml" <<CONF
listen = "127.0.0.1:$port"
homes = "homes"
host_keys = "hostkeys"
users = "users.toml"
fsync = $1
${2:-}
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

if [[ ${CPU_RUN:-1} != 0 ]]; then
  start_silo false
  cg=/sys/fs/cgroup/cpuacct/silo-bench-$$
  ossh=$work/ossh oport=${OSSH_CPU_PORT:-2224} bport=${SILO_BASE_PORT:-2033}
  chmod 755 "$work"
  mkdir -p "$ossh" && cp /tmp/ossh/id_ed25519 /tmp/ossh/id_ed25519.pub "$ossh/"
  OSSH_DIR=$ossh OSSH_PORT=$oport "$shared/bench/openssh-up.sh" >/dev/null
  odata=/srv/osshjail/benchuser/data/cpu-$$
  mkdir -p "$odata" && chown benchuser: "$odata"
  cpu_cleanup() {
    OSSH_DIR=$ossh "$shared/bench/openssh-down.sh" >/dev/null || true
    if [[ -n ${bpid:-} ]]; then kill "$bpid" 2>/dev/null || true; wait "$bpid" 2>/dev/null || true; fi
    for g in "$cg"/*/; do
      [[ -d $g ]] || continue
      for p in $(cat "$g/cgroup.procs"); do echo "$p" >"$cg/../cgroup.procs" || true; done
      rmdir "$g" || true
    done
    [[ -d $cg ]] && rmdir "$cg" || true
    rm -rf "$odata"
  }
  trap 'cpu_cleanup; cleanup' EXIT
  servers=(silo openssh) clientpin=""
  mkdir -p "$cg/client" "$cg/silo" "$cg/openssh"
  echo "$pid" >"$cg/silo/cgroup.procs"
  echo "$(cat "$ossh/sshd.pid")" >"$cg/openssh/cgroup.procs"
  if [[ -n ${SILO_BASE:-} ]]; then # the same home and users, another port
    sed "s/:$port\"/:$bport\"/; s/^homes = .*/homes = \"homes-base\"/" "$work/config.toml" >"$work/base.toml"
    : >"$work/base.log"
    "$SILO_BASE" serve --config "$work/base.toml" 2>"$work/base.log" &
    bpid=$!
    for _ in $(seq 100); do grep -q "listening on" "$work/base.log" && break; sleep 0.1; done
    grep -q "listening on" "$work/base.log" || { cat "$work/base.log" >&2; exit 1; }
    mkdir -p "$cg/base" && echo "$bpid" >"$cg/base/cgroup.procs"
    servers+=(base)
  fi
  L=/dev/shm/sftpbench # sftp-throughput.sh's test data, made by the runs above
  [[ -f $L/big.bin && -d $L/small ]] || { echo "no test data in $L" >&2; exit 1; }
  serverpid() { case $1 in silo) echo "$pid" ;; base) echo "$bpid" ;; openssh) cat "$ossh/sshd.pid" ;; esac; }
  target() { # target SERVER -> "PORT USER DIR"
    case $1 in silo) echo "$port bench /" ;; base) echo "$bport bench /" ;; openssh) echo "$oport benchuser /data/cpu-$$" ;; esac
  }
  sftpc() { # sftpc SERVER CIPHER < commands, the client in the client cgroup
    local p u d c=(-c "$2"); read -r p u d <<<"$(target "$1")"; [[ $2 == default ]] && c=()
    (echo "$BASHPID" >"$cg/client/cgroup.procs"; exec $clientpin sftp -q -b - -P "$p" -i "$key" "${c[@]}" \
      -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$u@127.0.0.1") >/dev/null
  }
  dir() { local p u d; read -r p u d <<<"$(target "$1")"; echo "${d%/}"; }
  gcm=aes128-gcm@openssh.com
  # workload SERVER NAME: the untimed preparation, then the timed command.
  prep() {
    local d; d=$(dir "$1")
    case $2 in
      put_1GiB*) echo "-rm $d/big.bin" | sftpc "$1" $gcm 2>/dev/null || true ;;
      put_2000*) printf -- '-rm %s/small/*\n-rmdir %s/small\n' "$d" "$d" | sftpc "$1" $gcm 2>/dev/null || true ;;
      put_4x*) printf -- "-rm $d/c%s.bin\n" 1 2 3 4 | sftpc "$1" $gcm 2>/dev/null || true ;;
      get_*) rm -rf "$L/big.get" "$L/small.get" ;;
    esac
  }
  timed() {
    local d; d=$(dir "$1")
    case $2 in
      put_1GiB_aes128gcm) echo "put $L/big.bin $d/big.bin" | sftpc "$1" $gcm ;;
      get_1GiB_aes128gcm) echo "get $d/big.bin $L/big.get" | sftpc "$1" $gcm ;;
      put_1GiB_default) echo "put $L/big.bin $d/big.bin" | sftpc "$1" default ;;
      get_1GiB_default) echo "get $d/big.bin $L/big.get" | sftpc "$1" default ;;
      get_1GiB_chacha20) echo "get $d/big.bin $L/big.get" | sftpc "$1" chacha20-poly1305@openssh.com ;;
      put_2000x4KiB) echo "put -r $L/small $d/small" | sftpc "$1" $gcm ;;
      get_2000x4KiB) echo "get -r $d/small $L/small.get" | sftpc "$1" $gcm ;;
      put_4x256MiB_parallel) local i ps=()
        for i in 1 2 3 4; do echo "put $L/c$i.bin $d/c$i.bin" | sftpc "$1" $gcm & ps+=($!); done
        for i in "${ps[@]}"; do wait "$i"; done ;;
    esac
  }
  bytes() { case $1 in *2000x4KiB) echo $((2000 * 4096)) ;; *) echo $((1 << 30)) ;; esac; }
  usage() { cat "$cg/$1/cpuacct.usage"; }
  # measure SERVER NAME -> "MB/s server_s/GiB client_s/GiB"
  measure() {
    local b s0 c0 t0 t1
    prep "$1" "$2"
    b=$(bytes "$2") s0=$(usage "$1") c0=$(usage client) t0=$(date +%s%N)
    timed "$1" "$2"
    t1=$(date +%s%N)
    awk -v b="$b" -v ns=$((t1 - t0)) -v s=$(($(usage "$1") - s0)) -v c=$(($(usage client) - c0)) \
      'BEGIN { g = b / 2^30; printf "%.1f %.3f %.3f\n", b / ns * 1e3, s / 1e9 / g, c / 1e9 / g }'
  }
  # Each server holds the files the get workloads fetch.
  for srv in "${servers[@]}"; do
    d=$(dir "$srv")
    printf -- "-rm %s/big.bin\nput %s/big.bin %s/big.bin\n" "$d" "$L" "$d" | sftpc "$srv" $gcm 2>/dev/null
    printf -- "-mkdir %s/small\nput -r %s/small %s/\n" "$d" "$L" "$d" | sftpc "$srv" $gcm
  done
  works=(put_1GiB_aes128gcm get_1GiB_aes128gcm put_1GiB_default get_1GiB_default get_1GiB_chacha20
    get_2000x4KiB put_4x256MiB_parallel put_2000x4KiB)
  case ${PIN:-both} in both) pins=(1 0) ;; *) pins=("$PIN") ;; esac
  for pinned in "${pins[@]}"; do
    if ((pinned)); then
      clientpin="taskset -c 1" spin=0
      echo "## CPU per GiB, pinned: server on core 0, client on core 1"
    else
      clientpin="" spin=0-$(($(nproc) - 1))
      echo "## CPU per GiB, unpinned"
    fi
    for srv in "${servers[@]}"; do taskset -a -p -c "$spin" "$(serverpid "$srv")" >/dev/null; done
    rm -f "$work"/cpu.*
    for w in "${works[@]}"; do
      [[ $w =~ ${CPU_ONLY:-.} ]] || continue
      for ((r = 0; r < ${ROUNDS:-5}; r++)); do
        order=("${servers[@]}")
        ((r % 2)) && order=(openssh "${servers[@]:0:1}" "${servers[@]:2}")
        for srv in "${order[@]}"; do echo "$w $r $(measure "$srv" "$w")" >>"$work/cpu.$srv"; done
        echo "# $w round $((r + 1))" >&2
      done
    done
    # Medians per server, and the median of per-round ratios to OpenSSH;
    # min-max of the ratios shows the noise.
    for srv in "${servers[@]}"; do
      [[ $srv == openssh ]] && continue
      echo "# $srv against openssh: MB/s ratio (min-max), server and client CPU per GiB ratio, and $srv's figures"
      paste -d' ' "$work/cpu.$srv" "$work/cpu.openssh" | awk '
        { w = $1; n[w]++; k = n[w]; if (k == 1) order[++m] = w
          R[w, k] = $3 / $8; S[w, k] = $4 / $9; C[w, k] = $5 / $10; M[w, k] = $3; SS[w, k] = $4; CC[w, k] = $5 }
        function med(a, w, c,   i, j, t, v) { for (i = 1; i <= c; i++) v[i] = a[w, i]
          for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
          lo = v[1]; hi = v[c]
          return (c % 2) ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2 }
        BEGIN { printf "%-24s %6s %11s %7s %7s %8s %8s %8s\n", "workload", "MB/s", "(min-max)", "srvCPU", "cliCPU", "MB/s", "srv_s/G", "cli_s/G" }
        END { for (i = 1; i <= m; i++) { w = order[i]; c = n[w]
          r = med(R, w, c); a = lo; b = hi
          printf "%-24s %6.2f %5.2f-%-5.2f %7.2f %7.2f %8.1f %8.2f %8.2f\n", w, r, a, b, med(S, w, c), med(C, w, c), med(M, w, c), med(SS, w, c), med(CC, w, c) } }'
    done
  done
  cpu_cleanup
  trap cleanup EXIT
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

if [[ ${IDLE_RUN:-1} != 0 ]]; then
  mport=$((port + 1000))
  start_silo false "metrics_listen = \"127.0.0.1:$mport\"
[limits]
max_connections_per_user = 0"
  go build -o "$work/idlebench" ./internal/idlebench
  echo "## idle SFTP sessions (10 per connection, INIT and REALPATH each, held): silo's RSS and goroutines"
  "$work/idlebench" -addr "127.0.0.1:$port" -key "$key" -pid "$pid" \
    -metrics "http://127.0.0.1:$mport/metrics" -sessions "${IDLE_SESSIONS:-500,1000}"
fi

if [[ ${SETUP_RUN:-1} != 0 ]]; then
  start_silo false
  n=${SETUP_LOGINS:-20}
  echo "## session setup: $n sequential sftp logins, each running one command (ls), silo's time over OpenSSH's"
  login() { # login PORT USER
    sftp -q -b - -P "$1" -i "$key" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$2@127.0.0.1" <<<ls >/dev/null
  }
  logins() { # logins PORT USER -> milliseconds for n logins
    local s e j
    s=$(date +%s%N)
    for ((j = 0; j < n; j++)); do login "$@"; done
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
  }
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  s=() o=() r=()
  for ((i = 0; i < ${ROUNDS:-5}; i++)); do
    if ((i % 2)); then o+=("$(logins 2222 benchuser)"); s+=("$(logins "$port" bench)")
    else s+=("$(logins "$port" bench)"); o+=("$(logins 2222 benchuser)"); fi
    r+=("$(awk -v s="${s[i]}" -v o="${o[i]}" 'BEGIN{printf "%.2f", s / o}')")
  done
  sm=$(median "${s[@]}") om=$(median "${o[@]}")
  lo=$(printf '%s\n' "${r[@]}" | sort -n | head -1) hi=$(printf '%s\n' "${r[@]}" | sort -n | tail -1)
  printf '%-16s %10s %10s %11s %14s\n' workload silo_ms openssh_ms time_ratio round_ratios
  printf '%-16s %10d %10d %11.2f %14s\n' "setup_x$n" "$sm" "$om" "$(awk -v s="$sm" -v o="$om" 'BEGIN{print s / o}')" "$lo-$hi"
fi

if [[ ${STORE_RUN:-1} != 0 ]]; then
  # A throw-away PostgreSQL, as nobody (it refuses root), on a Unix socket,
  # counting statements (pg_stat_statements). Each part runs in a cpuacct
  # cgroup of its own: the database, each node, the clients.
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pgdir=$(mktemp -d /tmp/silo-bench-pg.XXXXXX)
  scg=/sys/fs/cgroup/cpuacct/silo-store-$$
  mkdir -p "$scg/db" "$scg/usersfile" "$scg/client" "$scg/pg0" "$scg/pg1" "$scg/pg2"
  chown nobody "$pgdir"
  pg() { runuser -u nobody -- "$pgbin/$1" "${@:2}"; }
  pg initdb -D "$pgdir/data" -U postgres -A trust --no-sync >/dev/null
  (echo "$BASHPID" >"$scg/db/cgroup.procs"; exec runuser -u nobody -- "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start \
    -o "-c listen_addresses='' -c unix_socket_directories=$pgdir -c shared_preload_libraries=pg_stat_statements") >/dev/null
  psqlq() { psql -h "$pgdir" -U postgres -d postgres -Atqc "$1"; }
  psqlq "CREATE EXTENSION pg_stat_statements"
  nodes=() filepid=""
  stop_store() {
    for p in "${nodes[@]}" $filepid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    pg pg_ctl -D "$pgdir/data" -m immediate -w stop >/dev/null || true
    for g in "$scg"/*/; do
      for p in $(cat "$g/cgroup.procs" 2>/dev/null); do echo "$p" >"$scg/../cgroup.procs" || true; done
      rmdir "$g" 2>/dev/null || true
    done
    rmdir "$scg" 2>/dev/null || true
    rm -rf "$pgdir"
  }
  trap 'stop_store; cleanup' EXIT
  waitlog() { for _ in $(seq 100); do grep -q "$2" "$1" && return; sleep 0.1; done; cat "$1" >&2; exit 1; }
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
    (echo "$BASHPID" >"$scg/pg$1/cgroup.procs"; exec "$root/silo" serve --config "$work/pg$1.toml" 2>"$work/pg$1.log") &
    nodes+=($!)
    waitlog "$work/pg$1.log" "joined the cluster"
  }
  # The users.toml node: the same binary, config and filesystem for its
  # homes, in a cgroup of its own.
  mkdir -p "$work/filestore"
  cat >"$work/filestore/config.toml" <<CONF
listen = "127.0.0.1:$((port + 9))"
homes = "../pghomes-file"
host_keys = "../hostkeys"
users = "users.toml"
CONF
  "$root/silo" user add bench --key "$key.pub" --config "$work/filestore/config.toml" >/dev/null
  (cd "$work/filestore" && echo "$BASHPID" >"$scg/usersfile/cgroup.procs" && exec "$root/silo" serve --config config.toml 2>"$work/file.log") &
  filepid=$!
  waitlog "$work/file.log" "listening on"
  node 0
  L=/dev/shm/sftpbench # sftp-throughput.sh's test data
  [[ -f $L/big.bin && -d $L/small ]] || RUNS=0 "$shared/bench/sftp-throughput.sh" 127.0.0.1 "$((port + 9))" bench "$key" / >/dev/null
  spt() { case $1 in usersfile) echo $((port + 9)) ;; pg*) echo $((port + 10 + ${1#pg})) ;; esac; }
  sftps() { # sftps SERVER < commands, the client in the client cgroup
    (echo "$BASHPID" >"$scg/client/cgroup.procs"; exec sftp -q -b - -P "$(spt "$1")" -i "$key" -c aes128-gcm@openssh.com \
      -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR bench@127.0.0.1) >/dev/null
  }
  stmts() { psqlq "SELECT coalesce(sum(calls), 0) || ' ' || coalesce(sum(calls) FILTER (WHERE query ILIKE 'commit%'), 0)
    FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'"; }
  cpu() { cat "$scg/$1/cpuacct.usage"; }
  sprep() {
    case $2 in
      put_1GiB) echo "-rm big.bin" | sftps "$1" 2>/dev/null || true ;;
      put_2000x4KiB) printf -- '-rm small/*\n-rmdir small\n' | sftps "$1" 2>/dev/null || true ;;
      get_*) rm -rf "$L/big.get" "$L/small.get" ;;
    esac
  }
  stimed() {
    case $2 in
      put_1GiB) echo "put $L/big.bin big.bin" | sftps "$1" ;;
      get_1GiB) echo "get big.bin $L/big.get" | sftps "$1" ;;
      put_2000x4KiB) echo "put -r $L/small small" | sftps "$1" ;;
      get_2000x4KiB) echo "get -r small $L/small.get" | sftps "$1" ;;
    esac
  }
  # smeasure SERVER NAME -> "MB/s server_s/GiB db_s/GiB statements commits"
  smeasure() {
    local b s0 d0 t0 t1 q0 q1
    sprep "$1" "$2"
    [[ $2 == *2000x4KiB ]] && b=$((2000 * 4096)) || b=$((1 << 30))
    sync # the previous put's writeback is nobody's measurement
    q0=($(stmts))
    s0=$(cpu "$1") d0=$(cpu db) t0=$(date +%s%N)
    stimed "$1" "$2"
    t1=$(date +%s%N)
    local s1 d1; s1=$(cpu "$1") d1=$(cpu db); q1=($(stmts))
    awk -v b="$b" -v ns=$((t1 - t0)) -v s=$((s1 - s0)) -v d=$((d1 - d0)) -v q=$((q1[0] - q0[0])) -v c=$((q1[1] - q0[1])) \
      'BEGIN { g = b / 2^30; printf "%.1f %.3f %.3f %d %d\n", b / ns * 1e3, s / 1e9 / g, d / 1e9 / g, q, c }'
  }
  for srv in usersfile pg0; do
    printf -- "put %s/big.bin big.bin\n-mkdir small\nput -r %s/small .\n" "$L" "$L" | sftps "$srv"
  done
  echo "## PostgreSQL store against users.toml: one node each, aes128-gcm, alternated per workload"
  rm -f "$work"/store.*
  for w in put_1GiB get_1GiB put_2000x4KiB get_2000x4KiB; do
    [[ $w =~ ${STORE_ONLY:-.} ]] || continue
    for ((r = 0; r < ${ROUNDS:-5}; r++)); do
      order=(pg0 usersfile)
      ((r % 2)) && order=(usersfile pg0)
      for srv in "${order[@]}"; do echo "$w $r $(smeasure "$srv" "$w")" >>"$work/store.$srv"; done
      echo "# store $w round $((r + 1))" >&2
    done
  done
  # Per workload: the median of the per-round MB/s ratios (min-max), the
  # same of server CPU per GiB (the node, and the node plus the database),
  # each node's CPU per GiB, and the database's statements and commits
  # per workload.
  paste -d' ' "$work/store.pg0" "$work/store.usersfile" | awk '
    { w = $1; n[w]++; k = n[w]; if (k == 1) order[++m] = w
      R[w, k] = $3 / $10; S[w, k] = $4 / $11; T[w, k] = ($4 + $5) / $11; P[w, k] = $4; D[w, k] = $5; F[w, k] = $11
      Q[w, k] = $6; X[w, k] = $7 }
    function med(a, w, c,   i, j, t, v) { for (i = 1; i <= c; i++) v[i] = a[w, i]
      for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      lo = v[1]; hi = v[c]
      return (c % 2) ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2 }
    BEGIN { print "# postgres/usersfile: MB/s (min-max), CPU per GiB of the node, of node + database; s/GiB; database statements and commits"
      printf "%-15s %5s %11s %6s %6s %8s %8s %8s %6s %6s\n", "workload", "MB/s", "(min-max)", "nodeCPU", "+db", "pg_s/G", "db_s/G", "file_s/G", "stmts", "commits" }
    END { for (i = 1; i <= m; i++) { w = order[i]; c = n[w]
      r = med(R, w, c); a = lo; b = hi
      printf "%-15s %5.2f %5.2f-%-5.2f %6.2f %6.2f %8.2f %8.3f %8.2f %6d %6d\n", w, r, a, b, med(S, w, c), med(T, w, c),
        med(P, w, c), med(D, w, c), med(F, w, c), med(Q, w, c), med(X, w, c) } }'
  node 1
  node 2
  echo "## 3 x 256 MiB put at once: three nodes, one client each, against one node with three clients, alternated"
  src=/dev/shm/silo-bench-256
  head -c $((256 << 20)) /dev/urandom >"$src"
  allcpu() { echo $(($(cpu pg0) + $(cpu pg1) + $(cpu pg2) + $(cpu db))); }
  put3() { # put3 NODE NODE NODE -> "ms server_cpu_ms client_cpu_ms" for all three
    local s e i=0 s0 c0 ps=()
    echo "-rm p*" | sftps pg0 2>/dev/null || true
    sync
    s0=$(allcpu) c0=$(cpu client) s=$(date +%s%N)
    for n in "$@"; do
      i=$((i + 1))
      echo "put $src p$i" | sftps "$n" &
      ps+=($!)
    done
    wait "${ps[@]}"
    e=$(date +%s%N)
    echo $(((e - s) / 1000000)) $((($(allcpu) - s0) / 1000000)) $((($(cpu client) - c0) / 1000000))
  }
  rm -f "$work"/three.*
  for ((i = 0; i < ${ROUNDS:-5}; i++)); do
    if ((i % 2)); then put3 pg0 pg0 pg0 >>"$work/three.1"; put3 pg0 pg1 pg2 >>"$work/three.3"
    else put3 pg0 pg1 pg2 >>"$work/three.3"; put3 pg0 pg0 pg0 >>"$work/three.1"; fi
  done
  # The ratio of the medians (above 1: three nodes are faster), and how
  # many of the 2 cores servers plus clients kept busy.
  paste -d' ' "$work/three.3" "$work/three.1" | awk -v cores="$(nproc)" '
    function med(a, c,   i, j, t, v) { for (i = 1; i <= c; i++) v[i] = a[i]
      for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return (c % 2) ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2 }
    { n++; A[n] = $1; B[n] = $4; R[n] = $4 / $1; U3[n] = ($2 + $3) / $1; U1[n] = ($5 + $6) / $4
      S3[n] = $2 / 768 * 1024 / 1000; S1[n] = $5 / 768 * 1024 / 1000 }
    END { printf "%-14s %9s %9s %5s %11s %11s %9s %9s\n", "workload", "3nodes_ms", "1node_ms", "ratio", "cores_3nodes", "cores_1node", "srv_s/G_3", "srv_s/G_1"
      printf "%-14s %9d %9d %5.2f %11.2f %11.2f %9.2f %9.2f\n", "put_3x256MiB", med(A, n), med(B, n), med(R, n), med(U3, n), med(U1, n), med(S3, n), med(S1, n)
      printf "# of %d cores\n", cores }'
  rm -f "$src"
fi
