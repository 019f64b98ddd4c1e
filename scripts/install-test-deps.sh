#!/usr/bin/env bash
# System packages the test suite needs; installed only when missing so `make test` is fast to rerun.
set -euo pipefail
need=()
command -v tshark >/dev/null || need+=(tshark)
command -v curl >/dev/null || need+=(curl)
# A real HTTP load generator for the failover test (tests/e2e/test_failover_gunicorn.py).
command -v hey >/dev/null || need+=(hey)
# A real 3-member etcd 3.4 cluster backs the etcd store tests (tests/etcd_cluster.py).
command -v etcd >/dev/null || need+=(etcd-server)
# A real DNS server for the DNS discovery tests (tests/e2e/test_control_dns.py). dnsmasq-base, not
# dnsmasq: the latter installs and starts a system service that would take port 53.
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# Real nginx, redis-server and redis-cli for the README walkthrough (tests/e2e/test_readme_walkthrough.py)
# and nginx in front of a controlled proxy (tests/e2e/test_control_lifecycle.py).
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
# The package tests (tests/e2e/test_package.py) install the wheel into a venv made by Debian's own python3,
# and the unit files are checked with systemd-analyze verify (tests/e2e/test_units.py).
[ ! -x /usr/bin/python3 ] || /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
command -v systemd-analyze >/dev/null || need+=(systemd)
# libfaketime puts one proxy's clock 90 s ahead for `glassmesh check`'s clock test (tests/e2e/test_check.py).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # The tests start nginx and redis themselves: keep their packages from starting system services
  # (nginx on port 80, redis on 6379) while they install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  echo wireshark-common wireshark-common/install-setuid boolean false | debconf-set-selections
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
