#!/usr/bin/env bash
# instructions.sh - CPU instructions per request of one or more mirrorctl builds, counted by
# callgrind: a noise-free A/B where wall-clock throughput on a shared 2-core box is not.
#
#   bench/instructions.sh [--scenario B,C,P] [--requests N] [--connections N] LABEL=BIN ...
#
# A LABEL starting with `nginx` runs BIN as nginx with bench/conf/proxy-nginx.conf.tmpl (the
# config mirror-bench.sh gives it), e.g. `nginx=/usr/sbin/nginx`, for the same count.
#
# For every scenario and build: two nginx fixtures (primary, shadow) on 127.0.0.1, the build
# under `valgrind --tool=callgrind`, N requests from one client process (curl-free: a python
# keep-alive client, --connections sockets, so every build sees the same request sequence),
# then SIGTERM. Prints total instructions (Ir) ÷ requests, startup included (it is a few
# million Ir; with N = 20000 that is under 2 % and the same for every build).
#
# Scenarios: B = mirroring off; C = 100 % mirrored to a fast shadow; P = POST 64 KiB mirrored.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SCENARIOS=B,C,P
REQUESTS=20000
CONNS=8
NGINX=${NGINX:-/usr/sbin/nginx}
BUILDS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario|--scenarios) SCENARIOS=$2; shift 2;;
    --requests) REQUESTS=$2; shift 2;;
    --connections) CONNS=$2; shift 2;;
    -h|--help) sed -n 2,13p "$0"; exit 0;;
    *=*) BUILDS+=("$1"); shift;;
    *) echo "unknown argument $1 (builds are LABEL=BIN)" >&2; exit 2;;
  esac
done
[ ${#BUILDS[@]} -gt 0 ] || { echo "give at least one LABEL=BIN" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/mirrorctl-instr.XXXXXX)
PIDS=()
. "$HERE/lib/common.sh"
trap cleanup EXIT

# A keep-alive HTTP/1.1 client: N requests over C connections, round robin; checks every status.
cat >"$WORK/client.py" <<'EOF'
import socket, sys
port, total, conns, post = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
body = b"m" * 65536 if post else b""
head = (b"POST" if post else b"GET") + b" /bench?x=1 HTTP/1.1\r\nHost: bench\r\n"
head += b"Content-Length: %d\r\n\r\n" % len(body) if post else b"\r\n"
req = head + body
socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(conns)]
bufs = [b""] * conns
def answer(i):
    s = socks[i]
    while b"\r\n\r\n" not in bufs[i]:
        d = s.recv(65536)
        if not d: raise SystemExit("connection closed")
        bufs[i] += d
    h, _, rest = bufs[i].partition(b"\r\n\r\n")
    if not h.startswith(b"HTTP/1.1 200"): raise SystemExit(h.split(b"\r\n")[0].decode())
    n = int([l.split(b":")[1] for l in h.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest) < n:
        rest += s.recv(65536)
    bufs[i] = rest[n:]
done = 0
while done < total:
    k = min(conns, total - done)
    for i in range(k): socks[i].sendall(req)
    for i in range(k): answer(i)
    done += k
print(done)
EOF

printf '%-4s %-20s %10s %14s %12s\n' scen build requests instructions Ir/request
IFS=, read -r -a SCS <<<"$SCENARIOS"
for sc in "${SCS[@]}"; do
  for b in "${BUILDS[@]}"; do
    label=${b%%=*}; bin=${b#*=}
    pp=$(free_port); sp=$(free_port); xp=$(free_port)
    fixture primary "$pp"; fixture shadow "$sp"
    pct=100; post=0
    case "$sc" in B) pct=0;; C) ;; P) post=1;; *) echo "unknown scenario $sc" >&2; exit 2;; esac
    out=$WORK/$sc-$label.callgrind
    # nginx as the proxy runs the config mirror-bench.sh gives it (one process here).
    proxy_cmd "$label" "$bin" "$WORK/$sc-$label" "$xp" "$pp" "$sp" "$pct"
    timeout -k 5 3600 valgrind --tool=callgrind --callgrind-out-file="$out" "${CMD[@]}" \
      >"$WORK/$sc-$label.log" 2>&1 &
    vpid=$!; PIDS+=($vpid)
    wait_port "$xp" 60  # valgrind starts slowly
    n=$(timeout 3000 python3 "$WORK/client.py" "$xp" "$REQUESTS" "$CONNS" "$post")
    kill -TERM "$vpid"; wait "$vpid" || true
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
    printf '%-4s %-20s %10d %14d %12.0f\n' "$sc" "$label" "$n" "$ir" "$(awk -v a="$ir" -v b="$n" 'BEGIN {print a / b}')"
    cleanup; PIDS=()
  done
done
if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $WORK"; else rm -rf "$WORK"; fi
