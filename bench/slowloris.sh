#!/usr/bin/env bash
# bench/slowloris.sh: slowhttptest (Debian) against a fresh mirrorctl on loopback, while a
# normal client keeps sending requests. Reports slowhttptest's verdict per attack and the normal
# client's success rate and p99 during it. Everything on 127.0.0.1, bounded in time.
#
#   bench/slowloris.sh [--length 40] [--connections 1000] [--proxy-args '--body-timeout 20s']
# Needs: slowhttptest, curl, python3 (apt-get install slowhttptest curl python3), and a release
# build (cargo build --release).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${MIRRORCTL:-$HERE/../target/release/mirrorctl}
LENGTH=40
CONNS=1000
PROXY_ARGS=
while [ $# -gt 0 ]; do
  case "$1" in
    --length) LENGTH=$2; shift 2;;
    --connections) CONNS=$2; shift 2;;
    --proxy-args) PROXY_ARGS=$2; shift 2;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
command -v slowhttptest >/dev/null || { echo "slowhttptest not found (apt-get install slowhttptest)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN (cargo build --release)" >&2; exit 2; }
OUT=$(mktemp -d /tmp/mirrorctl-slow.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Fresh fixtures and proxy for each attack, so one attack's leftovers never skew the next.
start_all() {
  cleanup; PIDS=()
  for port in 28181 28182; do
    timeout $((LENGTH + 60)) python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers(); self.wfile.write(b"ok\n")
    do_POST = do_GET
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$port" &
    PIDS+=($!)
  done
  timeout $((LENGTH + 60)) "$BIN" serve --listen 127.0.0.1:28180 --primary http://127.0.0.1:28181 \
    --shadow http://127.0.0.1:28182 --access-log off --workers 1 $PROXY_ARGS 2>"$OUT/proxy-$1.log" &
  PIDS+=($!)
  for _ in $(seq 50); do curl -sf http://127.0.0.1:28180/ >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "proxy not up" >&2; exit 1
}

# The normal client: one request every 50 ms during the attack, latency recorded.
probe() {
  local end=$(( $(date +%s) + LENGTH )) n=0
  while [ "$(date +%s)" -lt "$end" ] && [ $n -lt 5000 ]; do
    curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}\n' http://127.0.0.1:28180/probe || echo "000 5"
    n=$((n + 1)); sleep 0.05
  done
}
for mode in H B X; do
  start_all "$mode"
  probe >"$OUT/probe-$mode.txt" &
  PROBE=$!
  extra=(); [ "$mode" = X ] && extra=(-k 2 -n 3 -w 10 -y 20 -z 32)   # slow read: small windows
  [ "$mode" = B ] && extra=(-t POST -s 8192)
  timeout $((LENGTH + 30)) slowhttptest -"$mode" -c "$CONNS" -r 200 -i 10 -l "$LENGTH" -p 3 \
    -u http://127.0.0.1:28180/ "${extra[@]}" >"$OUT/slow-$mode.txt" 2>&1 || true
  wait "$PROBE" || true
  # slowhttptest colours its output: strip the escapes before reading the verdict.
  plain=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/slow-$mode.txt" | tr '\r' '\n')
  verdict=$(printf '%s\n' "$plain" | grep -Eo 'service available: +[A-Z]+' | tail -n 1 | awk '{print $3}' || true)
  conns=$(printf '%s\n' "$plain" | grep -Eo 'connected: +[0-9]+' | tail -n 1 | awk '{print $2}' || true)
  exit_status="(attack held ${conns:-?} connections; $(printf '%s\n' "$plain" | grep -Eo 'Exit status: .*' | tail -n 1 || true))"
  python3 - "$mode" "$OUT/probe-$mode.txt" "${verdict:-?}" "${exit_status:-}" <<'PY'
import sys
mode, path, verdict, status = sys.argv[1:5]
rows = [l.split() for l in open(path) if l.strip()]
ok = [float(t) for c, t in rows if c == "200"]
lat = sorted(ok)
p99 = lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else float("nan")
name = {"H": "slow headers (slowloris)", "B": "slow body (R-U-Dead-Yet)", "X": "slow read"}[mode]
print(f"{name:28} slowhttptest: service available at the end: {verdict:4} {status}")
print(f"{'':28} normal client during it: {len(ok)}/{len(rows)} OK, p99 {p99:.1f} ms")
PY
done
echo "logs: $OUT"
