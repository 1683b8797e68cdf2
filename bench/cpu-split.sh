#!/usr/bin/env bash
# cpu-split.sh - user vs system CPU per request of the proxy process, nginx and mirrorctl builds
# interleaved, scenario B (proxy only), plus the system calls each makes per request.
#
#   bench/cpu-split.sh [--rounds N] [--duration S] [--strace] LABEL=BIN ...
#
# A LABEL starting with `nginx` runs BIN as nginx with bench/conf/proxy-nginx.conf.tmpl (the
# config mirror-bench.sh gives it). For each round and build: the nginx primary fixture on
# 127.0.0.1, the proxy, wrk -t1 -c32 (2 s warm-up, then S seconds measured); utime and stime of
# the proxy process from /proc/PID/stat before and after. Prints CPU-seconds per 100 000
# requests, user and system. With --strace, one more short run per build under `strace -c -f`
# (8 connections, 3 s): system calls per request.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
ROUNDS=3
DURATION=8
STRACE=0
BUILDS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --strace) STRACE=1; shift;;
    -h|--help) sed -n 2,12p "$0"; exit 0;;
    *=*) BUILDS+=("$1"); shift;;
    *) echo "unknown argument $1 (builds are LABEL=BIN)" >&2; exit 2;;
  esac
done
[ ${#BUILDS[@]} -gt 0 ] || { echo "give at least one LABEL=BIN" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is needed (bench/setup)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/mirrorctl-split.XXXXXX)
PIDS=()
. "$HERE/lib/common.sh"
trap 'cleanup; rm -rf "$WORK"' EXIT

PP=$(free_port)
fixture primary "$PP"

proxy_cmd() {  # proxy_cmd LABEL BIN PORT -> sets CMD
  case "$1" in
    nginx*)
      nginx_proxy_conf "$WORK/proxy-$1" "$3" "$PP" "$PP" 0
      CMD=("$2" -p "$WORK/proxy-$1" -c "$WORK/proxy-$1/proxy.conf" -g 'daemon off; master_process off;');;
    *) CMD=("$2" serve --listen "127.0.0.1:$3" --primary "http://127.0.0.1:$PP" \
            --mirror-percent 0 --access-log off --workers 1);;
  esac
}
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
hz=$(getconf CLK_TCK)

printf '%-12s %5s %10s %9s %9s %22s %22s\n' build round requests user_s sys_s 'user CPU-s/100k req' 'sys CPU-s/100k req'
for round in $(seq 1 "$ROUNDS"); do
  for b in "${BUILDS[@]}"; do
    label=${b%%=*}; bin=${b#*=}; port=$(free_port)
    proxy_cmd "$label" "$bin" "$port"
    "${CMD[@]}" >/dev/null 2>&1 &
    pid=$!; PIDS+=($pid)
    wait_port "$port"
    wrk -t1 -c32 -d2s "http://127.0.0.1:$port/bench?x=1" >/dev/null
    read -r u0 s0 < <(ticks "$pid")
    reqs=$(wrk -t1 -c32 -d"${DURATION}s" "http://127.0.0.1:$port/bench?x=1" | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    awk -v l="$label" -v n="$round" -v r="$reqs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" \
      'BEGIN {printf "%-12s %5d %10d %9.2f %9.2f %22.3f %22.3f\n", l, n, r, u/hz, s/hz, u/hz/r*1e5, s/hz/r*1e5}'
  done
done

[ "$STRACE" = 1 ] || exit 0
command -v strace >/dev/null || { echo "strace is needed for --strace (apt-get install strace)" >&2; exit 2; }
for b in "${BUILDS[@]}"; do
  label=${b%%=*}; bin=${b#*=}; port=$(free_port)
  proxy_cmd "$label" "$bin" "$port"
  timeout -k 5 120 strace -c -f -o "$WORK/$label.strace" "${CMD[@]}" >/dev/null 2>&1 &
  spid=$!; PIDS+=($spid)
  wait_port "$port"
  reqs=$(wrk -t1 -c8 -d3s "http://127.0.0.1:$port/bench?x=1" | awk '/requests in/ {print $1}')
  pkill -TERM -P "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  echo "== $label: system calls per request ($reqs requests, strace -c -f)"
  awk -v r="$reqs" 'NR > 2 && $NF != "total" && $4 + 0 > 0 {printf "  %-14s %6.2f\n", $NF, $4 / r}' \
    "$WORK/$label.strace" | sort -k2 -rn | head -8
done
