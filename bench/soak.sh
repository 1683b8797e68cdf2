#!/usr/bin/env bash
# bench/soak.sh: a bounded soak of mirrorctl, run by hand. Load for the whole duration (wrk),
# the shadow flapping (stopped 3 s, started 3 s, over and over) and a live config change every
# ~20 s through the CLI (set-mirror, set-weight, reload of an edited file), while mirrorctl's
# RSS, open fds, threads and its /metrics (primary requests by status class, mirror outcomes,
# breaker state) are sampled into a CSV.
#
#   bench/soak.sh [--duration 600] [--sample 10] [--out DIR] [--connections 8]
#                 [--change-every 20] [--flap 3] [--warmup 30] [--proxy-args '--workers 1']
#
# Exits 1 when the primary answered any 5xx, wrk saw non-2xx/3xx answers or socket errors,
# a CLI change was refused, or RSS grew past 2x its first sample after the warm-up.
# Needs bench/setup (nginx, wrk, curl, ss, python3) and a release build (built here if missing).
# Everything listens on 127.0.0.1; every process started here is bounded by `timeout` and
# killed on exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

DURATION=600
SAMPLE=10
OUT=
CONNS=8
CHANGE_EVERY=20
FLAP=3
WARMUP=30
PROXY_ARGS=
BIN=${MIRRORCTL:-$ROOT/target/release/mirrorctl}
NGINX=${NGINX:-/usr/sbin/nginx}
PY=${PY:-$(command -v /usr/bin/python3 || command -v python3)}
PROXY_PORT=28280
PRIMARY_PORT=28281
SHADOW_PORT=28282
ADMIN=127.0.0.1:28290

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2;;
    --sample) SAMPLE=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --connections) CONNS=$2; shift 2;;
    --change-every) CHANGE_EVERY=$2; shift 2;;
    --flap) FLAP=$2; shift 2;;
    --warmup) WARMUP=$2; shift 2;;
    --proxy-args) PROXY_ARGS=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2;;
  esac
done
for n in DURATION SAMPLE CONNS CHANGE_EVERY FLAP WARMUP; do
  [[ ${!n} =~ ^[0-9]+$ && ${!n} -gt 0 ]] || { echo "--${n,,}: a positive whole number" >&2; exit 2; }
done
for tool in wrk curl ss "$NGINX" "$PY"; do
  command -v "$tool" >/dev/null || { echo "$tool not found (run bench/setup)" >&2; exit 2; }
done
[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || { echo "nginx echo module missing (run bench/setup)" >&2; exit 2; }
if [ ! -x "$BIN" ]; then
  echo "building $BIN (cargo build --release)" >&2
  (cd "$ROOT" && cargo build --release --locked)
fi

[ -n "$OUT" ] || OUT=$HERE/results/soak-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN=$(mktemp -d /tmp/mirrorctl-soak.XXXXXX)
CSV=$OUT/soak.csv
MAXLIFE=$((DURATION + 120))   # every process started here dies by itself after this
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------------------- processes
STARTED=()   # `timeout` wrappers started here; each one's only child is the server
start_bg() {  # start_bg LOGFILE CMD...; sets BG_PID
  local out=$1; shift
  timeout -k 5 "$MAXLIFE" "$@" >"$out" 2>&1 &
  BG_PID=$!
  STARTED+=("$BG_PID")
}
stop_bg() {  # stop_bg PID: TERM, up to 5 s, then KILL; only PIDs started here
  local p=$1 q keep=()
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
  for q in "${STARTED[@]:-}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  STARTED=("${keep[@]:-}")
}
cleanup() {
  local p
  for p in "${STARTED[@]:-}"; do [ -z "$p" ] || stop_bg "$p"; done
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {  # wait_port PORT PID LOG
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { log "process for port $1 died:"; tail -n 20 "$3" >&2; exit 1; }
    sleep 0.1
  done
  log "port $1 not up after 10 s"; exit 1
}
for port in $PROXY_PORT $PRIMARY_PORT $SHADOW_PORT ${ADMIN##*:}; do
  [ -z "$(ss -Hltn "( sport = :$port )" 2>/dev/null)" ] || { echo "port $port is in use" >&2; exit 2; }
done

# ------------------------------------------------------------------------------- fixtures
nginx_fixture() {  # nginx_fixture NAME PORT BODY: render the bench upstream template, start it
  local name=$1 port=$2 body=$3 conf=$RUN/$1.conf
  mkdir -p "$RUN/$name-tmp"
  sed -e "s|@RUNDIR@|$RUN|g" -e "s|@NAME@|$name|g" -e "s|@PORT@|$port|g" \
      -e "s|@HANDLER@|return 200 \"$body\\\\n\";|" "$HERE/conf/upstream.conf.tmpl" >"$conf"
  start_bg "$RUN/$name.out" "$NGINX" -p "$RUN" -c "$conf" -g 'daemon off;'
  wait_port "$port" "$BG_PID" "$RUN/$name.out"
}
nginx_fixture primary "$PRIMARY_PORT" primary
PRIMARY_PID=$BG_PID
nginx_fixture shadow "$SHADOW_PORT" shadow
SHADOW_PID=$BG_PID
SHADOW_UP=1

# v1 and v1b are the same primary (so a weight change never sends clients to the flapping
# shadow); v2 is the shadow, mirrored at 100 %. Reloads alternate a response header.
CONFIG=$RUN/soak.yaml
write_config() {  # write_config GENERATION
  cat >"$CONFIG" <<EOF
listeners: [127.0.0.1:$PROXY_PORT]
access_log: "off"
mirror_defaults: {timeout: 2s}
services:
  - {name: v1, endpoints: [127.0.0.1:$PRIMARY_PORT]}
  - {name: v1b, endpoints: [127.0.0.1:$PRIMARY_PORT]}
  - {name: v2, endpoints: [127.0.0.1:$SHADOW_PORT]}
routes:
  - name: default
    route: [{destination: v1}]
    mirrors: [{destination: v2, percent: 100}]
    headers: {response: {set: {x-soak-generation: "$1"}}}
EOF
}
write_config 0
MIRRORCTL_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
export MIRRORCTL_TOKEN
# shellcheck disable=SC2086  # --proxy-args is a list of flags
start_bg "$OUT/mirrorctl.log" "$BIN" serve --config "$CONFIG" --admin "$ADMIN" \
  --state "$RUN/state.json" $PROXY_ARGS
PROXY_WRAPPER=$BG_PID
wait_port "$PROXY_PORT" "$PROXY_WRAPPER" "$OUT/mirrorctl.log"
PROXY_PID=$(pgrep -P "$PROXY_WRAPPER" | head -n 1)
[ -n "$PROXY_PID" ] || { log "mirrorctl's pid not found"; exit 1; }
curl -sf "http://127.0.0.1:$PROXY_PORT/" >/dev/null || { log "mirrorctl does not answer"; exit 1; }
log "mirrorctl pid $PROXY_PID; primary :$PRIMARY_PORT, shadow :$SHADOW_PORT; out $OUT"

# ------------------------------------------------------------------------------- the soak
start_bg "$OUT/wrk.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 2s --latency \
  "http://127.0.0.1:$PROXY_PORT/soak?x=1"
WRK_PID=$BG_PID

CHANGES=0
CHANGE_FAILURES=0
GENERATION=0
ctl() {  # ctl ARGS...: one CLI change, logged; a refusal is counted
  CHANGES=$((CHANGES + 1))
  if "$BIN" "$@" --admin "$ADMIN" >>"$OUT/changes.log" 2>&1; then
    printf '[%s] ok   %s\n' "$(date +%T)" "$*" >>"$OUT/changes.log"
  else
    CHANGE_FAILURES=$((CHANGE_FAILURES + 1))
    printf '[%s] FAIL %s\n' "$(date +%T)" "$*" >>"$OUT/changes.log"
    log "config change failed: $*"
  fi
}
change() {  # the Nth change, in a cycle of five
  case $(( CHANGES % 5 )) in
    0) ctl set-mirror --route default --shadow v2 --percent 50;;
    1) ctl set-mirror --route default --shadow v2 --percent 100;;
    2) ctl set-weight --route default v1=90 v1b=10;;
    3) ctl set-weight --route default v1=100 v1b=0;;
    4) GENERATION=$((GENERATION + 1)); write_config "$GENERATION"; ctl reload;;
  esac
}

echo "t_s,rss_kb,fds,threads,primary_2xx,primary_3xx,primary_4xx,primary_5xx,mirror_sent,mirror_succeeded,mirror_failed,mirror_timeout,mirror_circuit_open,mirror_overload,mirror_sampled_out,mirror_other,breaker_open,shadow_up,changes,change_failures" >"$CSV"
sample() {  # one CSV row
  local t=$1 rss fds threads metrics
  kill -0 "$PROXY_PID" 2>/dev/null || { log "mirrorctl died at ${t} s:"; tail -n 20 "$OUT/mirrorctl.log" >&2; exit 1; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$PROXY_PID/status")
  fds=$(find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  metrics=$(curl -sf -m 5 "http://$ADMIN/metrics" | "$PY" -c '
import re, sys
st = {k: 0 for k in ("2", "3", "4", "5")}
mo = {k: 0 for k in ("sent", "succeeded", "failed", "timeout", "circuit_open", "overload", "sampled_out")}
other = 0
breaker = 0
for line in sys.stdin:
    m = re.match(r"(\w+)\{([^}]*)\} (\S+)", line)
    if not m:
        continue
    name, labels, value = m.group(1), dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(2))), float(m.group(3))
    if name == "mirrorctl_requests_total" and labels.get("target") == "primary":
        st[labels["status"][0]] = st.get(labels["status"][0], 0) + value
    elif name == "mirrorctl_mirror_total":
        if labels["outcome"] in mo:
            mo[labels["outcome"]] += value
        else:
            other += value
    elif name == "mirrorctl_shadow_circuit_open":
        breaker = max(breaker, value)
vals = [st["2"], st["3"], st["4"], st["5"]] + list(mo.values()) + [other, breaker]
print(",".join(str(int(v)) for v in vals))
') || metrics=",,,,,,,,,,,,"
  echo "$t,$rss,$fds,$threads,$metrics,$SHADOW_UP,$CHANGES,$CHANGE_FAILURES" >>"$CSV"
}

START=$(date +%s)
next_sample=0
next_change=$CHANGE_EVERY
next_flap=$FLAP
sample 0
while kill -0 "$WRK_PID" 2>/dev/null; do
  now=$(( $(date +%s) - START ))
  [ "$now" -lt "$DURATION" ] || break
  if [ "$now" -ge "$next_flap" ]; then
    if [ "$SHADOW_UP" = 1 ]; then
      stop_bg "$SHADOW_PID"; SHADOW_UP=0
    else
      nginx_fixture shadow "$SHADOW_PORT" shadow; SHADOW_PID=$BG_PID; SHADOW_UP=1
    fi
    next_flap=$((next_flap + FLAP))
  fi
  if [ "$now" -ge "$next_change" ]; then
    change
    next_change=$((next_change + CHANGE_EVERY))
  fi
  if [ "$now" -ge $((next_sample + SAMPLE)) ]; then
    next_sample=$((next_sample + SAMPLE))
    sample "$now"
  fi
  sleep 0.2
done
wait "$WRK_PID" 2>/dev/null || true
[ "$SHADOW_UP" = 1 ] || { nginx_fixture shadow "$SHADOW_PORT" shadow; SHADOW_PID=$BG_PID; SHADOW_UP=1; }
sleep 3   # mirrors in flight finish or time out
sample $(( $(date +%s) - START ))
kill -0 "$PROXY_PID" 2>/dev/null || { log "mirrorctl died during the soak"; tail -n 20 "$OUT/mirrorctl.log" >&2; exit 1; }

# ------------------------------------------------------------------------------- summary
"$PY" - "$CSV" "$OUT/wrk.txt" "$WARMUP" "$CONNS" "$DURATION" "$OUT/summary.txt" <<'PY'
import csv, re, sys
path, wrk_path, warmup, conns, duration, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
rows = list(csv.DictReader(open(path)))
num = lambda r, k: int(r[k]) if r[k] not in ("", None) else 0
wrk = open(wrk_path).read()
def grab(pattern, default=0):
    m = re.search(pattern, wrk)
    return int(m.group(1)) if m else default
requests = grab(r"(\d+) requests in")
non2xx = grab(r"Non-2xx or 3xx responses: (\d+)")
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", wrk)
sock = [int(x) for x in m.groups()] if m else [0, 0, 0, 0]
lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", wrk, re.M))
rps = re.search(r"Requests/sec:\s+(\S+)", wrk)
warm = [r for r in rows if int(r["t_s"]) >= warmup] or rows
rss0 = num(warm[0], "rss_kb")
rss_max = max(num(r, "rss_kb") for r in warm)
first, last = rows[0], rows[-1]
p5xx = num(last, "primary_5xx")
failures = num(last, "change_failures")
lines = [
    f"duration {duration} s, {len(rows)} samples, wrk -c{conns}: {requests} requests "
    f"({rps.group(1) if rps else '?'}/s), non-2xx/3xx {non2xx}, socket errors "
    f"connect {sock[0]} read {sock[1]} write {sock[2]} timeout {sock[3]}",
    f"latency p50 {lat.get('50', '?')}  p75 {lat.get('75', '?')}  p90 {lat.get('90', '?')}  p99 {lat.get('99', '?')}",
    f"RSS kB   first {num(first, 'rss_kb')}  after warm-up ({warm[0]['t_s']} s) {rss0}  max {rss_max}  last {num(last, 'rss_kb')}",
    f"fds      first {num(first, 'fds')}  max {max(num(r, 'fds') for r in rows)}  last {num(last, 'fds')}",
    f"threads  first {num(first, 'threads')}  max {max(num(r, 'threads') for r in rows)}  last {num(last, 'threads')}",
    f"primary  2xx {num(last, 'primary_2xx')}  4xx {num(last, 'primary_4xx')}  5xx {p5xx}",
    "mirror   " + "  ".join(f"{k} {num(last, 'mirror_' + k)}" for k in
                            ("sent", "succeeded", "failed", "timeout", "circuit_open", "overload", "sampled_out", "other")),
    f"config changes {num(last, 'changes')}, refused {failures}",
]
problems = []
if p5xx:
    problems.append(f"{p5xx} primary 5xx")
if non2xx or any(sock):
    problems.append(f"wrk: {non2xx} non-2xx/3xx, socket errors {sock}")
if failures:
    problems.append(f"{failures} config changes refused")
if rss0 and rss_max > 2 * rss0:
    problems.append(f"RSS grew from {rss0} kB to {rss_max} kB (> 2x)")
lines.append("FAIL: " + "; ".join(problems) if problems else "PASS")
text = "\n".join(lines)
print(text)
open(out, "w").write(text + "\n")
sys.exit(1 if problems else 0)
PY
