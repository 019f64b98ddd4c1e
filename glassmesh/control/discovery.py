"""Names shared by the discovery sources and compile, kept free of I/O and of dnspython.

compile.py must stay pure and cheap to import (benchmarks and every replica
run it), so it learns what a DNS-discovered instance looks like from here,
not from dns.py, which pulls in a resolver.
"""

from __future__ import annotations

# The host every DNS-discovered instance belongs to. Such an instance has no proxy in front of
# it: in a snapshot, an endpoint with this host is the instance's own address, reached directly
# (not a peer proxy's inbound port). A mesh host must never be given this name.
EXTERNAL_HOST = "external"

# InstanceRecord.source of each discovery source.
SOURCE_PROXY = "proxy"  # reported by the proxy on the instance's host, health-checked there
SOURCE_STATIC = "static"  # listed in mesh.yaml
SOURCE_DNS = "dns"  # resolved from a service's `dns:` name by the control plane


def is_external(host: str) -> bool:
    """True for an endpoint that is the instance itself (no proxy, no mTLS), false for a mesh host."""
    return host == EXTERNAL_HOST
