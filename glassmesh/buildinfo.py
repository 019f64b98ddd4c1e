"""Which build of the hot path this process runs: mypyc-compiled or plain Python.

Both behave the same; the compiled one is faster (see setup.py). Operators
see which one a proxy runs in its start-up line and in /metrics, so that a
slow proxy on a host without a C compiler is explained, not guessed at.
"""

from __future__ import annotations

import importlib
from functools import cache

HOT_MODULES = (
    "glassmesh.protocols.http1",
    "glassmesh.protocols.mux",
    "glassmesh.proxy.http",
    "glassmesh.proxy.sides",
    "glassmesh.proxy.pool",
    "glassmesh.proxy.mux",
    "glassmesh.proxy.linkstats",
    "glassmesh.proxy.roundrobin",
    "glassmesh.proxy.routing",
    "glassmesh.proxy.tcp",
    "glassmesh.proxy.chain",
    "glassmesh.proxy.stages.endpoint",
    "glassmesh.proxy.stages.eject",
    "glassmesh.proxy.stages.balance",
    "glassmesh.proxy.stages.split",
    "glassmesh.proxy.stages.route",
    "glassmesh.proxy.stages.retry",
    "glassmesh.proxy.stages.overload",
    "glassmesh.proxy.stages.fault",
    "glassmesh.proxy.stages.mirror",
)


def compiled_modules() -> list[str]:
    """The hot-path modules loaded from a compiled extension."""
    out = []
    for name in HOT_MODULES:
        f = getattr(importlib.import_module(name), "__file__", "") or ""
        if not f.endswith(".py"):
            out.append(name)
    return out


@cache
def hot_path() -> str:
    """'mypyc' when every hot module is compiled, 'python' when none is, 'mixed' otherwise."""
    n = len(compiled_modules())
    return "mypyc" if n == len(HOT_MODULES) else "python" if n == 0 else "mixed"
