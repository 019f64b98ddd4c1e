#!/usr/bin/env bash
# `make bench [ARGS=--quick]`: installs the load tools and reference proxies when missing, then runs
# bench/bench.py with the project's venv. Knobs are environment variables; see docs/bench.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${VPY:-$ROOT/.venv/bin/python}"

need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux)   # the scaling section pins wrk
command -v redis-server >/dev/null || need+=(redis-server)   # the tcp section's app
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]} (apt)"
  if [ "$(id -u)" != 0 ]; then
    echo "bench: need root for apt-get install ${need[*]}; install them and rerun" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x "$PY" ]; then
  echo "bench: no venv at $PY; run 'make venv' (make bench does it)" >&2
  exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PY" "$ROOT/bench/bench.py" "$@"
