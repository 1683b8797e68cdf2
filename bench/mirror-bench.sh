#!/usr/bin/env bash
# mirror-bench.sh - loopback benchmark for HTTP traffic-mirroring proxies.
# (mirrorctl's copy, grown from shared/bench: several proxies interleaved in one run, and
#  scenarios P (POST 64 KiB, mirrored) and N (new connection per request, mirrored).)
#
# Scenarios (primary and shadow are nginx fixtures on 127.0.0.1):
#   A  direct: load generator -> primary (no proxy; the ceiling on this box)
#   B  load -> proxy -> primary, mirroring OFF
#   C  proxy, 100% mirroring to a FAST shadow
#   D  proxy, 100% mirroring to a SLOW shadow (answers after $SLOW_DELAY s)
#   E  proxy, 100% mirroring to a DEAD shadow: port closed (connection refused)
#   F  proxy, 100% mirroring to a DEAD shadow: blackhole (accepts, reads, never answers)
#   P  proxy, 100% mirroring to a FAST shadow, POST with a $POST_BYTES-byte body
#   N  proxy, 100% mirroring to a FAST shadow, a new TCP connection per request
#
# See README.md for usage. Everything listens on / connects to 127.0.0.1 only,
# every process started here is wrapped in `timeout`, and every load run is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat <<EOF
Usage: $0 [options]
  --proxies LIST                 interleave several proxies in one run: nginx,mirrorctl (each
                                 run does every proxy in turn, then the next scenario); an
                                 entry mirrorctl-LABEL=BIN adds another mirrorctl build (A/B)
  --mirrorctl BIN                mirrorctl binary (default: target/release/mirrorctl)
  --mirrorctl-args 'ARGS'        extra serve flags for mirrorctl (default: --workers 1)
  --post-bytes N                 body size for scenario P (default 65536)
  --proxy nginx|haproxy|custom   proxy under test (default: \$PROXY or nginx)
  --proxy-cmd 'CMD'              command for --proxy custom; tokens {CONF} {PORT}
                                 {PRIMARY_PORT} {SHADOW_PORT} {MIRROR_PERCENT} {RUNDIR}
  --proxy-conf FILE.tmpl         config template for the proxy (rendered to {CONF});
                                 tokens @PROXY_PORT@ @PRIMARY_PORT@ @SHADOW_PORT@
                                 @MIRROR_PERCENT@ @IF_MIRROR@ @IF_NOMIRROR@ @RUNDIR@ @MIRROR_TIMEOUT@
  --proxy-port N                 proxy listen port (default 18080)
  --primary-port N / --shadow-port N   (defaults 18081 / 18082)
  --scenario LIST                comma list of A..F,P,N (default A,B,C,D,E,F)
  --runs N                       repetitions, interleaved A..F,A..F (default 2)
  --duration S                   measured load seconds (default 10)
  --connections N / --threads N  load generator shape (default 32 / 1)
  --warmup S / --settle S        warm-up before / drain after measuring (default 2 / 2)
  --slow-delay S                 slow shadow delay for D (default 0.2)
  --loadgen wrk|oha              (default wrk; oha from \$OHA or PATH)
  --conn-close                   send 'Connection: close' (new TCP connection per request)
  --shadow-empty                 fast shadow answers '204 No Content' (no body) instead of a 19-byte body
  --wrk-timeout T                wrk --timeout (default 2s): slower responses are not in the
                                 histogram but counted as timeout errors (wrk also counts every
                                 connection whose request is older than T at each 2-s check)
  --mirror-timeout T             nginx template: proxy_*_timeout of the mirror location (default 60s)
  --path /P                      request path (default /bench?x=1)
  --out DIR                      results dir (default results/<timestamp>)
  --label TEXT                   free-text label stored in results
All options also exist as env vars (PROXY, PROXY_CMD, PROXY_CONF, PROXY_PORT, ...).
EOF
}

PROXY=${PROXY:-nginx}
PROXIES=${PROXIES:-}
MIRRORCTL=${MIRRORCTL:-$(cd "$HERE/.." && pwd)/target/release/mirrorctl}
MIRRORCTL_ARGS=${MIRRORCTL_ARGS:---workers 1}
POST_BYTES=${POST_BYTES:-65536}
PROXY_CMD=${PROXY_CMD:-}
PROXY_CONF=${PROXY_CONF:-}
PROXY_PORT=${PROXY_PORT:-18080}
PRIMARY_PORT=${PRIMARY_PORT:-18081}
SHADOW_PORT=${SHADOW_PORT:-18082}
SCENARIOS=${SCENARIOS:-A,B,C,D,E,F}
RUNS=${RUNS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
SETTLE=${SETTLE:-2}
SLOW_DELAY=${SLOW_DELAY:-0.2}
LOADGEN=${LOADGEN:-wrk}
CONN_CLOSE=${CONN_CLOSE:-0}
MIRROR_TIMEOUT=${MIRROR_TIMEOUT:-60s}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
SHADOW_EMPTY=${SHADOW_EMPTY:-0}
URL_PATH=${URL_PATH:-/bench?x=1}
LABEL=${LABEL:-}
OUTDIR=${OUTDIR:-}
OHA=${OHA:-$(command -v oha || true)}
NGINX=${NGINX:-/usr/sbin/nginx}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
PY=${PY:-$(command -v /usr/bin/python3 || command -v python3)}

while [ $# -gt 0 ]; do
  case "$1" in
    --proxy) PROXY=$2; shift 2;;
    --proxies) PROXIES=$2; shift 2;;
    --mirrorctl) MIRRORCTL=$2; shift 2;;
    --mirrorctl-args) MIRRORCTL_ARGS=$2; shift 2;;
    --post-bytes) POST_BYTES=$2; shift 2;;
    --proxy-cmd) PROXY_CMD=$2; shift 2;;
    --proxy-conf) PROXY_CONF=$2; shift 2;;
    --proxy-port) PROXY_PORT=$2; shift 2;;
    --primary-port) PRIMARY_PORT=$2; shift 2;;
    --shadow-port) SHADOW_PORT=$2; shift 2;;
    --scenario|--scenarios) SCENARIOS=$2; shift 2;;
    --runs) RUNS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --connections) CONNS=$2; shift 2;;
    --threads) THREADS=$2; shift 2;;
    --warmup) WARMUP=$2; shift 2;;
    --settle) SETTLE=$2; shift 2;;
    --slow-delay) SLOW_DELAY=$2; shift 2;;
    --loadgen) LOADGEN=$2; shift 2;;
    --conn-close) CONN_CLOSE=1; shift;;
    --shadow-empty) SHADOW_EMPTY=1; shift;;
    --mirror-timeout) MIRROR_TIMEOUT=$2; shift 2;;
    --wrk-timeout) WRK_TIMEOUT=$2; shift 2;;
    --path) URL_PATH=$2; shift 2;;
    --out) OUTDIR=$2; shift 2;;
    --label) LABEL=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2;;
  esac
done

case "$LOADGEN" in
  wrk) command -v wrk >/dev/null || { echo "wrk not found on PATH (run ./setup.sh)" >&2; exit 2; };;
  oha) OHA=$(command -v "${OHA:-oha}" 2>/dev/null || true)
       [ -n "$OHA" ] || {
         echo "--loadgen oha: oha not found (neither \$OHA nor PATH); install it with ./setup.sh --with-oha" >&2; exit 2; };;
  *) echo "unknown --loadgen $LOADGEN (wrk|oha)" >&2; exit 2;;
esac

NGINX_CMD_DEFAULT="$NGINX -p {RUNDIR} -c {CONF} -g 'daemon off;'"
HAPROXY_CMD_DEFAULT="$HAPROXY -db -f {CONF}"
USER_PROXY_CMD=$PROXY_CMD
USER_PROXY_CONF=$PROXY_CONF
select_proxy() {  # select_proxy NAME[=BIN]: sets PROXY PROXY_CMD PROXY_CONF
  PROXY=${1%%=*}; PROXY_CMD=$USER_PROXY_CMD; PROXY_CONF=$USER_PROXY_CONF
  local bin=$MIRRORCTL
  case "$1" in mirrorctl*=*) bin=${1#*=};; esac
  case "$PROXY" in
    nginx)   [ -n "$PROXY_CONF" ] || PROXY_CONF=$HERE/conf/proxy-nginx.conf.tmpl
             [ -n "$PROXY_CMD" ] || PROXY_CMD=$NGINX_CMD_DEFAULT;;
    haproxy) [ -n "$PROXY_CONF" ] || PROXY_CONF=$HERE/conf/proxy-haproxy.cfg.tmpl
             [ -n "$PROXY_CMD" ] || PROXY_CMD=$HAPROXY_CMD_DEFAULT;;
    mirrorctl*)
             [ -x "$bin" ] || { echo "mirrorctl binary not found: $bin (cargo build --release)" >&2; exit 2; }
             PROXY_CONF=""
             PROXY_CMD="$bin serve --listen 127.0.0.1:{PORT} --primary http://127.0.0.1:{PRIMARY_PORT} --shadow http://127.0.0.1:{SHADOW_PORT} --mirror-percent {MIRROR_PERCENT} --access-log off $MIRRORCTL_ARGS";;
    custom)  [ -n "$PROXY_CMD" ] || { echo "--proxy custom needs --proxy-cmd" >&2; exit 2; };;
    *) echo "unknown proxy $PROXY" >&2; exit 2;;
  esac
}
[ -n "$PROXIES" ] || PROXIES=$PROXY
IFS=, read -r -a PROXY_LIST <<<"$PROXIES"
for p in "${PROXY_LIST[@]}"; do select_proxy "$p"; done

names=""; for p in "${PROXY_LIST[@]}"; do names+="-${p%%=*}"; done
[ -n "$OUTDIR" ] || OUTDIR=$HERE/results/$(date +%Y%m%d-%H%M%S)$names
mkdir -p "$OUTDIR/runs"
OUTDIR=$(cd "$OUTDIR" && pwd)   # absolute: nginx -p / pid paths must not be relative
CLK_TCK=$(getconf CLK_TCK)
# every server we start dies by itself after this many seconds, whatever happens
MAXLIFE=$(( WARMUP + DURATION + 2 * SETTLE + 120 ))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # raise soft fd limit to the hard limit

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- processes
STARTED=()          # PIDs of the `timeout` wrappers we started
cleanup() {
  local p
  if [ -n "${SAMPLER_PID:-}" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  for p in "${STARTED[@]:-}"; do
    if [ -n "$p" ]; then stop_bg "$p"; fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_bg LOGFILE CMD... ; sets BG_PID to the `timeout` wrapper (the server is its only child)
start_bg() {
  local log=$1; shift
  timeout -k 5 "$MAXLIFE" "$@" >"$log" 2>&1 &
  BG_PID=$!
  STARTED+=("$BG_PID")
}
stop_bg() {  # stop_bg PID  (TERM, wait up to 5 s, then KILL); only PIDs we started
  local p=$1 i keep=() q
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  fi
  wait "$p" 2>/dev/null || true
  for q in "${STARTED[@]:-}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  STARTED=("${keep[@]:-}")
}

port_busy() { [ -n "$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]; }
wait_port() {  # wait_port PORT WRAPPER_PID [LOGFILE]
  local i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then
      log "process for port $1 died${3:+; last lines of $3:}"
      if [ -n "${3:-}" ]; then tail -n 5 "$3" >&2; fi
      return 1
    fi
    sleep 0.1
  done
  log "port $1 not ready after 10 s"; return 1
}

# all descendants of PID (excluding PID itself)
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { par[$1]=$2; pids[NR]=$1 }
    END { want[root]=1; changed=1
          while (changed) { changed=0
            for (i in pids) { p=pids[i]; if (!(p in want) && (par[p] in want)) { want[p]=1; changed=1 } } }
          for (p in want) if (p != root) print p }'
}
tree_ticks() {   # utime+stime+cutime+cstime (clock ticks) summed over the tree below wrapper PID
  local t=0 p v  # (c* fields: reaped children, e.g. fork-per-connection proxies)
  for p in $(descendants "$1"); do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13+$14+$15}') || v=0
    t=$(( t + ${v:-0} ))
  done
  echo "$t"
}
host_busy() {   # busy clock ticks of the whole machine (user+nice+system+irq+softirq, /proc/stat)
  awk '/^cpu / {print $2+$3+$4+$7+$8; exit}' /proc/stat
}
tree_kb() {      # tree_kb WRAPPER_PID VmHWM|VmRSS  -> kB summed over the tree
  local t=0 p v
  for p in $(descendants "$1"); do
    v=$(awk -v k="$2:" '$1==k {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
    t=$(( t + ${v:-0} ))
  done
  echo "$t"
}

# ---------------------------------------------------------------- rendering
render() {  # render TEMPLATE OUT key=value...
  local tmpl=$1 out=$2; shift 2
  local sedargs=() kv k v
  for kv in "$@"; do
    k=${kv%%=*}; v=${kv#*=}
    v=$(printf '%s' "$v" | sed -e 's/[\\/&|]/\\&/g')
    sedargs+=(-e "s|@${k}@|${v}|g")
  done
  sed "${sedargs[@]}" "$tmpl" >"$out"
}
subst_cmd() {  # replace {TOKENS} in the proxy command
  local c=$1; shift
  local kv pat
  for kv in "$@"; do pat="{${kv%%=*}}"; c=${c//"$pat"/"${kv#*=}"}; done
  printf '%s' "$c"
}

start_upstream() {  # start_upstream RUNDIR NAME PORT fast|slow ; sets BG_PID
  local rd=$1 name=$2 port=$3 kind=$4 handler
  if [ "$kind" = slow ]; then
    handler="echo_sleep $SLOW_DELAY; echo \"slow $name ok\";"
  elif [ "$name" = shadow ] && [ "$SHADOW_EMPTY" = 1 ]; then
    handler="return 204;"
  else
    handler="return 200 \"hello from $name\\n\";"
  fi
  mkdir -p "$rd/$name-tmp"
  render "$HERE/conf/upstream.conf.tmpl" "$rd/$name.conf" \
    RUNDIR="$rd" NAME="$name" PORT="$port" HANDLER="$handler"
  start_bg "$rd/$name.out" "$NGINX" -p "$rd" -c "$rd/$name.conf" -g 'daemon off;'
}

nginx_status() {  # "accepts requests" counters of an upstream fixture (stub_status)
  local n
  n=$(curl -s --max-time 3 -H 'Connection: close' "http://127.0.0.1:$1/__bench_status" \
    | awk 'NR==3 {print $1, $3}') || true
  echo "${n:-0 0}"
}
nginx_requests() { local a; a=$(nginx_status "$1"); echo "${a#* }"; }
nginx_accepts() { local a; a=$(nginx_status "$1"); echo "${a% *}"; }
shadow_count() {  # shadow_count KIND RUNDIR -> "accepts requests"
  case "$1" in
    fast|slow) nginx_status "$SHADOW_PORT";;
    blackhole) "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["conns"], j["requests"])' \
                 "$2/blackhole.json" 2>/dev/null || echo "0 0";;
    *) echo "0 0";;
  esac
}

# ---------------------------------------------------------------- load
run_load() {  # run_load URL SECONDS OUTFILE CPUFILE [CONN_CLOSE] [POST]
  local url=$1 secs=$2 out=$3 cpuf=$4 CONN_CLOSE=${5:-$CONN_CLOSE} post=${6:-0}
  local TIMEFORMAT='%U %S'
  if [ "$LOADGEN" = oha ]; then
    local extra=(); [ "$CONN_CLOSE" = 1 ] && extra+=(--disable-keepalive)
    # -z: requests still open at the deadline are aborted and counted ("aborted due to deadline")
    { time timeout -k 5 $(( secs + 30 )) "$OHA" -z "${secs}s" -c "$CONNS" --no-tui \
        --worker-threads "$THREADS" --output-format json "${extra[@]}" "$url" >"$out" 2>"$out.err" ; } 2>"$cpuf" || true
  else
    local extra=(); [ "$CONN_CLOSE" = 1 ] && extra+=(-H 'Connection: close')
    local script="$HERE/lib/wrk-report.lua"
    if [ "$post" = 1 ]; then
      script="$OUTDIR/wrk-post.lua"
      { printf 'wrk.method = "POST"\nwrk.body = string.rep("m", %d)\n' "$POST_BYTES"
        printf 'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        cat "$HERE/lib/wrk-report.lua"; } >"$script"
    fi
    { time timeout -k 5 $(( secs + 30 )) wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" \
        --timeout "$WRK_TIMEOUT" --latency -s "$script" \
        "${extra[@]}" "$url" >"$out" 2>&1 ; } 2>"$cpuf" || true
  fi
}

# sampler WRAPPER_PID FILE STOPFLAG, every 0.5 s:
#   time  proxy_tree_RSS_kB  proxy->shadow_ESTABLISHED  client->proxy_ESTABLISHED  client_conns_with_unread_bytes
# The last column (Recv-Q > 0 on the proxy's accepted sockets) shows requests sitting unread
# in the kernel, i.e. head-of-line blocking of keep-alive connections, whatever the proxy.
sampler() {
  local w=$1 f=$2 flag=$3 end=$(( $(date +%s) + DURATION + 2 * SETTLE + 10 ))
  while [ -e "$flag" ] && [ "$(date +%s)" -lt "$end" ]; do
    printf '%s %s %s %s\n' "$(date +%s.%N)" "$(tree_kb "$w" VmRSS)" \
      "$(ss -Htn state established "( dport = :$SHADOW_PORT )" 2>/dev/null | wc -l)" \
      "$(ss -Htn state established "( sport = :$PROXY_PORT )" 2>/dev/null | awk '{n++; if ($1>0) q++} END {print n+0, q+0}')" >>"$f"
    sleep 0.5
  done
}

compact_rundir() {  # keep result dirs small: big logs -> head/tail, drop empty temp dirs
  local f n
  for f in "$1"/*.log "$1"/*.out; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt 1048576 ]; then
      n=$(wc -l <"$f")
      { head -n 20 "$f"; echo "... [mirror-bench: truncated, $n lines in total] ..."; tail -n 5 "$f"; } >"$f.tmp"
      mv "$f.tmp" "$f"
    fi
  done
  find "$1" -mindepth 1 -type d -empty -delete 2>/dev/null || true
}

run_one() {  # run_one SCENARIO REP  (proxy chosen by select_proxy)
  local sc=$1 rep=$2 rd="$OUTDIR/runs/$PROXY/$1-$2"
  [ "$sc" != A ] || rd="$OUTDIR/runs/direct/$1-$2"
  mkdir -p "$rd"
  local shadow_kind use_proxy=1 mirror=1 sc_close=$CONN_CLOSE sc_post=0
  case "$sc" in
    A) shadow_kind=none; use_proxy=0; mirror=0;;
    B) shadow_kind=fast; mirror=0;;
    C) shadow_kind=fast;;
    D) shadow_kind=slow;;
    E) shadow_kind=closed;;
    F) shadow_kind=blackhole;;
    P) shadow_kind=fast; sc_post=1;;
    N) shadow_kind=fast; sc_close=1;;
    *) log "unknown scenario $sc"; return 1;;
  esac
  local p
  for p in "$PRIMARY_PORT" "$SHADOW_PORT" "$PROXY_PORT"; do
    if port_busy "$p"; then log "port $p already in use; refusing to run"; return 1; fi
  done

  local prim_w shadow_w="" proxy_w=""
  start_upstream "$rd" primary "$PRIMARY_PORT" fast; prim_w=$BG_PID
  case "$shadow_kind" in
    fast|slow) start_upstream "$rd" shadow "$SHADOW_PORT" "$shadow_kind"; shadow_w=$BG_PID;;
    blackhole) start_bg "$rd/blackhole.out" "$PY" "$HERE/lib/blackhole.py" \
                 "$SHADOW_PORT" "$rd/blackhole.json" "$MAXLIFE"; shadow_w=$BG_PID;;
  esac
  wait_port "$PRIMARY_PORT" "$prim_w" "$rd/primary.out"
  if [ -n "$shadow_w" ]; then wait_port "$SHADOW_PORT" "$shadow_w" "$rd/shadow.out"; fi

  local target_port=$PRIMARY_PORT mp=0 conf="$rd/proxy.conf"
  if [ "$use_proxy" = 1 ]; then
    local ifm="# " ifn="" cmd
    if [ "$mirror" = 1 ]; then mp=100; ifm=""; ifn="# "; fi
    mkdir -p "$rd/proxy-tmp"
    if [ -n "$PROXY_CONF" ]; then
      render "$PROXY_CONF" "$conf" RUNDIR="$rd" PROXY_PORT="$PROXY_PORT" PRIMARY_PORT="$PRIMARY_PORT" \
        SHADOW_PORT="$SHADOW_PORT" MIRROR_PERCENT="$mp" IF_MIRROR="$ifm" IF_NOMIRROR="$ifn" \
        MIRROR_TIMEOUT="$MIRROR_TIMEOUT"
    fi
    cmd=$(subst_cmd "$PROXY_CMD" CONF="$conf" PORT="$PROXY_PORT" PRIMARY_PORT="$PRIMARY_PORT" \
          SHADOW_PORT="$SHADOW_PORT" MIRROR_PERCENT="$mp" RUNDIR="$rd")
    printf '%s\n' "$cmd" >"$rd/proxy.cmd"
    start_bg "$rd/proxy.out" bash -c "exec $cmd"; proxy_w=$BG_PID
    wait_port "$PROXY_PORT" "$proxy_w" "$rd/proxy.out"
    target_port=$PROXY_PORT
  fi
  local url="http://127.0.0.1:$target_port$URL_PATH"

  # warm-up (not measured), then let in-flight mirrors drain
  if [ "$WARMUP" != 0 ]; then run_load "$url" "$WARMUP" "$rd/warmup.out" "$rd/warmup.cpu" "$sc_close" "$sc_post"; fi
  sleep "$SETTLE"

  local pcpu0=0 primcpu0 shcpu0=0
  local pst0 sst0 prim0 sh0 pacc0 shacc0
  pst0=$(nginx_status "$PRIMARY_PORT"); sst0=$(shadow_count "$shadow_kind" "$rd")
  pacc0=${pst0% *}; prim0=${pst0#* }; shacc0=${sst0% *}; sh0=${sst0#* }
  if [ -n "$proxy_w" ]; then pcpu0=$(tree_ticks "$proxy_w"); fi
  primcpu0=$(tree_ticks "$prim_w")
  if [ -n "$shadow_w" ]; then shcpu0=$(tree_ticks "$shadow_w"); fi

  local flag="$rd/.sampling"; : >"$flag"
  if [ -n "$proxy_w" ]; then sampler "$proxy_w" "$rd/samples.txt" "$flag" & SAMPLER_PID=$!; fi

  log "$PROXY scenario $sc run $rep: $LOADGEN ${CONNS}c ${DURATION}s conn_close=$sc_close post=$sc_post -> $url (shadow=$shadow_kind)"
  local t0 t1 hb0 hb1; hb0=$(host_busy); t0=$(date +%s.%N)
  run_load "$url" "$DURATION" "$rd/load.out" "$rd/load.cpu" "$sc_close" "$sc_post"
  t1=$(date +%s.%N); hb1=$(host_busy)
  # CPU during the measured window only
  local pcpu1=0 primcpu1 shcpu1=0 shconn_end
  if [ -n "$proxy_w" ]; then pcpu1=$(tree_ticks "$proxy_w"); fi
  primcpu1=$(tree_ticks "$prim_w")
  if [ -n "$shadow_w" ]; then shcpu1=$(tree_ticks "$shadow_w"); fi
  shconn_end=$(ss -Htn state established "( dport = :$SHADOW_PORT )" 2>/dev/null | wc -l)
  sleep "$SETTLE"

  local prim1 sh1 pcpu2=0 hwm=0 rss_end=0 shconn_settled
  local pst1 sst1 pacc1 shacc1
  pst1=$(nginx_status "$PRIMARY_PORT"); sst1=$(shadow_count "$shadow_kind" "$rd")
  pacc1=${pst1% *}; prim1=${pst1#* }; shacc1=${sst1% *}; sh1=${sst1#* }
  if [ -n "$proxy_w" ]; then
    pcpu2=$(tree_ticks "$proxy_w"); hwm=$(tree_kb "$proxy_w" VmHWM); rss_end=$(tree_kb "$proxy_w" VmRSS)
  fi
  shconn_settled=$(ss -Htn state established "( dport = :$SHADOW_PORT )" 2>/dev/null | wc -l)
  rm -f "$flag"
  if [ -n "${SAMPLER_PID:-}" ]; then wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; fi

  # proxy error-log size: cheap indicator of per-request error logging (nginx template)
  local errlog_lines=0
  if [ -f "$rd/proxy.error.log" ]; then errlog_lines=$(wc -l <"$rd/proxy.error.log"); fi

  if [ -n "$proxy_w" ]; then stop_bg "$proxy_w"; fi
  if [ -n "$shadow_w" ]; then stop_bg "$shadow_w"; fi
  stop_bg "$prim_w"
  compact_rundir "$rd"

  # stub_status counts its own query: subtract 1 for nginx fixtures
  # (accepts: the status query opens one connection of its own as well)
  local prim_recv=$(( prim1 - prim0 - 1 )) sh_recv=0 prim_conns=$(( pacc1 - pacc0 - 1 )) sh_conns=0
  case "$shadow_kind" in
    fast|slow) sh_recv=$(( sh1 - sh0 - 1 )); sh_conns=$(( shacc1 - shacc0 - 1 ));;
    blackhole) sh_recv=$(( sh1 - sh0 )); sh_conns=$(( shacc1 - shacc0 ));;
  esac
  local lcpu
  lcpu=$(tr '\n' ' ' <"$rd/load.cpu" | awk '{print $(NF-1)+$NF}')
  cat >"$rd/metrics.env" <<EOF
scenario=$sc
rep=$rep
proxy=$( if [ "$use_proxy" = 1 ]; then echo "$PROXY"; else echo none; fi )
shadow=$shadow_kind
mirror_percent=$mp
loadgen=$LOADGEN
conn_close=$sc_close
post_bytes=$( if [ "$sc_post" = 1 ]; then echo "$POST_BYTES"; else echo 0; fi )
connections=$CONNS
threads=$THREADS
duration_s=$DURATION
load_t0=$t0
load_t1=$t1
load_wall_s=$(echo "$t1 - $t0" | bc)
primary_received=$prim_recv
shadow_received=$sh_recv
primary_conns_opened=$prim_conns
shadow_conns_opened=$sh_conns
proxy_cpu_ticks=$(( pcpu1 - pcpu0 ))
proxy_cpu_ticks_incl_settle=$(( pcpu2 - pcpu0 ))
primary_cpu_ticks=$(( primcpu1 - primcpu0 ))
shadow_cpu_ticks=$(( shcpu1 - shcpu0 ))
clk_tck=$CLK_TCK
loadgen_cpu_s=$lcpu
proxy_hwm_kb=$hwm
proxy_rss_end_kb=$rss_end
shadow_conns_at_load_end=$shconn_end
shadow_conns_after_settle=$shconn_settled
proxy_errlog_lines=$errlog_lines
host_busy_ticks=$(( hb1 - hb0 ))
EOF
}

# ---------------------------------------------------------------- main
cat >"$OUTDIR/meta.env" <<EOF
label=$LABEL
proxies=$PROXIES
mirrorctl_cmd=$MIRRORCTL serve ... --access-log off $MIRRORCTL_ARGS
mirrorctl_version=$("$MIRRORCTL" --version 2>/dev/null || echo none)
post_bytes=$POST_BYTES
scenarios=$SCENARIOS
runs=$RUNS
duration_s=$DURATION
connections=$CONNS
threads=$THREADS
warmup_s=$WARMUP
settle_s=$SETTLE
slow_delay_s=$SLOW_DELAY
loadgen=$LOADGEN
conn_close=$CONN_CLOSE
mirror_timeout=$MIRROR_TIMEOUT
wrk_timeout=$WRK_TIMEOUT
shadow_empty=$SHADOW_EMPTY
path=$URL_PATH
ports=$PROXY_PORT/$PRIMARY_PORT/$SHADOW_PORT
host=$(hostname) nproc=$(nproc) kernel=$(uname -r)
nginx=$($NGINX -v 2>&1 | sed 's/.*\///')
started=$(date -Is)
EOF

IFS=, read -r -a SC_LIST <<<"$SCENARIOS"
if [ "$PROXY" = haproxy ]; then   # no native mirroring in HAProxy 2.6: only A and B make sense
  keep=(); for sc in "${SC_LIST[@]}"; do case "$sc" in A|B) keep+=("$sc");; *) log "haproxy: skipping $sc (no mirroring)";; esac; done
  SC_LIST=("${keep[@]}")
fi
for rep in $(seq "$RUNS"); do
  for sc in "${SC_LIST[@]}"; do
    if [ "$sc" = A ]; then run_one A "$rep"; continue; fi
    for p in "${PROXY_LIST[@]}"; do
      select_proxy "$p"
      run_one "$sc" "$rep"
    done
  done
done

"$PY" "$HERE/lib/report.py" "$OUTDIR"
