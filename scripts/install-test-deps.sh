#!/usr/bin/env bash
# System packages the test suite needs; installed only when missing so `make test` is fast to rerun.
set -euo pipefail
need=()
command -v tshark >/dev/null || need+=(tshark)
command -v curl >/dev/null || need+=(curl)
# A real 3-member etcd 3.4 cluster backs the etcd store tests (tests/etcd_cluster.py).
command -v etcd >/dev/null || need+=(etcd-server)
# A real DNS server for the DNS discovery tests (tests/e2e/test_control_dns.py). dnsmasq-base, not
# dnsmasq: the latter installs and starts a system service that would take port 53.
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  echo wireshark-common wireshark-common/install-setuid boolean false | debconf-set-selections
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
