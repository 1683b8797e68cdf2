#!/usr/bin/env bash
# cpu-split.sh - user vs system CPU per request of the proxy process, nginx and mirrorctl builds
# interleaved, plus what every other process on the box spent, and the system calls the proxy
# makes per request.
#
#   bench/cpu-split.sh [--scenario B|P] [--rounds N] [--duration S] [--strace] LABEL=BIN ...
#
# A LABEL starting with `nginx` runs BIN as nginx with bench/conf/proxy-nginx.conf.tmpl (the
# config mirror-bench.sh gives it). Scenario B: mirroring off; P: POST 64 KiB mirrored at 100 %
# to a shadow fixture (mirror-bench.sh's B and P). For each round and build: the nginx fixtures
# on 127.0.0.1, the proxy, wrk -t1 -c32 (2 s warm-up, then S seconds measured); utime and stime
# of the proxy, the fixtures and wrk from /proc before and after. Prints CPU-seconds per
# 100 000 requests: the proxy's user and system time, the rest of the box (fixtures + wrk), the
# total, and the total's share of what the proxy's user time is. With --strace, one more short
# run per build under `strace -c -f` (8 connections, 3 s): system calls per request.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
ROUNDS=3
DURATION=8
STRACE=0
SCENARIO=B
BUILDS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --strace) STRACE=1; shift;;
    --scenario) SCENARIO=$2; shift 2;;
    -h|--help) sed -n 2,14p "$0"; exit 0;;
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
SP=$PP PERCENT=0 WRK_ARGS=()
case "$SCENARIO" in
  B) ;;
  P) SP=$(free_port); fixture shadow "$SP"; PERCENT=100
     printf 'wrk.method = "POST"\nwrk.body = string.rep("m", 65536)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
       >"$WORK/post.lua"
     WRK_ARGS=(-s "$WORK/post.lua");;
  *) echo "unknown scenario $SCENARIO (B or P)" >&2; exit 2;;
esac
# The fixtures' nginx processes (children of the `timeout` wrappers in PIDS).
FIXTURES=$(for p in "${PIDS[@]}"; do pgrep -P "$p"; done | tr '\n' ' ')

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
fixture_ticks() { local t=0 p u s; for p in $FIXTURES; do read -r u s < <(ticks "$p"); t=$((t + u + s)); done; echo $t; }
hz=$(getconf CLK_TCK)

echo "scenario $SCENARIO; CPU-seconds per 100k requests (rest = fixtures + wrk)"
printf '%-12s %5s %10s %8s %8s %8s %8s %8s\n' build round requests rps user sys rest total
for round in $(seq 1 "$ROUNDS"); do
  for b in "${BUILDS[@]}"; do
    label=${b%%=*}; bin=${b#*=}; port=$(free_port)
    proxy_cmd "$label" "$bin" "$WORK/proxy-$label" "$port" "$PP" "$SP" "$PERCENT"
    "${CMD[@]}" >/dev/null 2>&1 &
    pid=$!; PIDS+=($pid)
    wait_port "$port"
    wrk -t1 -c32 -d2s "${WRK_ARGS[@]}" "http://127.0.0.1:$port/bench?x=1" >/dev/null
    read -r u0 s0 < <(ticks "$pid"); f0=$(fixture_ticks)
    TIMEFORMAT='%U %S'
    { time reqs=$(wrk -t1 -c32 -d"${DURATION}s" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/bench?x=1" \
        | awk '/requests in/ {print $1}'); } 2>"$WORK/wrk.time"
    read -r u1 s1 < <(ticks "$pid"); f1=$(fixture_ticks)
    read -r wu ws <"$WORK/wrk.time"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    awk -v l="$label" -v n="$round" -v r="$reqs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v f=$((f1 - f0)) \
        -v w="$(echo "$wu + $ws" | bc)" -v hz="$hz" -v d="$DURATION" \
      'BEGIN {k = 1e5 / r; rest = f / hz + w; printf "%-12s %5d %10d %8.0f %8.3f %8.3f %8.3f %8.3f\n",
              l, n, r, r / d, u / hz * k, s / hz * k, rest * k, (u / hz + s / hz + rest) * k}'
  done
done

[ "$STRACE" = 1 ] || exit 0
command -v strace >/dev/null || { echo "strace is needed for --strace (apt-get install strace)" >&2; exit 2; }
for b in "${BUILDS[@]}"; do
  label=${b%%=*}; bin=${b#*=}; port=$(free_port)
  proxy_cmd "$label" "$bin" "$WORK/proxy-$label" "$port" "$PP" "$SP" "$PERCENT"
  timeout -k 5 120 strace -c -f -o "$WORK/$label.strace" "${CMD[@]}" >/dev/null 2>&1 &
  spid=$!; PIDS+=($spid)
  wait_port "$port"
  reqs=$(wrk -t1 -c8 -d3s "${WRK_ARGS[@]}" "http://127.0.0.1:$port/bench?x=1" | awk '/requests in/ {print $1}')
  pkill -TERM -P "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  echo "== $label: system calls per request ($reqs requests, strace -c -f)"
  awk -v r="$reqs" 'NR > 2 && $NF != "total" && $4 + 0 > 0 {printf "  %-14s %6.2f\n", $NF, $4 / r}' \
    "$WORK/$label.strace" | sort -k2 -rn | head -8
done
