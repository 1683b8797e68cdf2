# common.sh - helpers shared by the per-process measurement scripts (instructions.sh,
# cpu-split.sh). Source it after setting HERE (bench/), NGINX, WORK (a scratch dir) and
# PIDS=() (processes to stop on exit: `trap cleanup EXIT`).

cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {  # wait_port PORT [SECONDS=20]: until 127.0.0.1:PORT accepts
  local tries=$(( ${2:-20} * 10 ))
  for _ in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}

fixture() {  # fixture NAME PORT: an nginx upstream answering "hello from NAME" (mirror-bench's)
  local rd=$WORK/$1
  mkdir -p "$rd/$1-tmp"
  sed -e "s|@RUNDIR@|$rd|g" -e "s|@NAME@|$1|g" -e "s|@PORT@|$2|g" \
      -e "s|@HANDLER@|return 200 \"hello from $1\\\\n\";|g" \
      "$HERE/conf/upstream.conf.tmpl" >"$rd/$1.conf"
  timeout -k 5 3600 "$NGINX" -p "$rd" -c "$rd/$1.conf" -g 'daemon off;' >"$rd/out" 2>&1 &
  PIDS+=($!)
  wait_port "$2"
}

nginx_proxy_conf() {  # nginx_proxy_conf DIR PROXY_PORT PRIMARY_PORT SHADOW_PORT PERCENT: DIR/proxy.conf
  local on="" off="# "
  [ "$5" = 0 ] && { on="# "; off=""; }
  mkdir -p "$1/proxy-tmp"
  sed -e "s|@RUNDIR@|$1|g" -e "s|@PROXY_PORT@|$2|g" -e "s|@PRIMARY_PORT@|$3|g" \
      -e "s|@SHADOW_PORT@|$4|g" -e "s|@MIRROR_PERCENT@|$5|g" -e "s|@IF_MIRROR@|$on|g" \
      -e "s|@IF_NOMIRROR@|$off|g" -e "s|@MIRROR_TIMEOUT@|60s|g" \
      "$HERE/conf/proxy-nginx.conf.tmpl" >"$1/proxy.conf"
}

proxy_cmd() {  # proxy_cmd LABEL BIN DIR PROXY_PORT PRIMARY_PORT SHADOW_PORT PERCENT -> sets CMD
  # LABEL nginx*: BIN is nginx with mirror-bench's proxy config (written into DIR); otherwise
  # BIN is a mirrorctl build, one worker, access log off.
  case "$1" in
    nginx*)
      nginx_proxy_conf "$3" "$4" "$5" "$6" "$7"
      CMD=("$2" -p "$3" -c "$3/proxy.conf" -g 'daemon off; master_process off;');;
    *) CMD=("$2" serve --listen "127.0.0.1:$4" --primary "http://127.0.0.1:$5" \
            --shadow "http://127.0.0.1:$6" --mirror-percent "$7" --access-log off --workers 1);;
  esac
}
