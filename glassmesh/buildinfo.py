"""Which build of the hot path this process runs: mypyc-compiled or plain Python.

Both behave the same; the compiled one is faster (see setup.py). Operators
see which one a proxy runs in its start-up line and in /metrics, so that a
slow proxy on a host without a C compiler is explained, not guessed at. A
proxy that runs any of it interpreted, or compiled from an older source than
the one beside it, also says so in a WARNING line at start, in its /ready
document and, through its acks, in `glassmesh status`: never a silent
fallback.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import cache
from typing import Any

HOT_MODULES = (
    "glassmesh.protocols.http1",
    "glassmesh.protocols.http1_codec",
    "glassmesh.protocols.mux",
    "glassmesh.proxy.http",
    "glassmesh.proxy.sides",
    "glassmesh.proxy.pool",
    "glassmesh.proxy.mux",
    "glassmesh.proxy.linkstats",
    "glassmesh.proxy.ring",
    "glassmesh.proxy.roundrobin",
    "glassmesh.proxy.routing",
    "glassmesh.proxy.tcp",
    "glassmesh.proxy.chain",
    "glassmesh.proxy.accepted",
    "glassmesh.proxy.observer",
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
    # All imported first, then looked at: a compiled module pulls the others of its mypyc group in
    # compiled, replacing a plain one imported before it (one whose own compiled module is missing).
    mods = [importlib.import_module(name) for name in HOT_MODULES]
    return [m.__name__ for m in mods if not (getattr(sys.modules[m.__name__], "__file__", "") or "").endswith(".py")]


@cache
def hot_path() -> str:
    """'mypyc' when every hot module is compiled, 'python' when none is, 'mixed' otherwise."""
    n = len(compiled_modules())
    return "mypyc" if n == len(HOT_MODULES) else "python" if n == 0 else "mixed"


# What interpreting the request path costs: instructions per proxied request, interpreted over compiled
# (compiling cuts them by about 40%: callgrind, see setup.py).
INTERPRETED_COST = "about 1.7 times the CPU per request of the compiled build"
# A source this much newer than its compiled module was edited after the build (pip writes a wheel's
# files within seconds of each other, in no set order, so a smaller gap means nothing).
STALE_AFTER_S = 60.0


def interpreted_modules() -> list[str]:
    """The hot-path modules running as plain Python (no compiled extension, or one that did not load)."""
    done = set(compiled_modules())
    return [name for name in HOT_MODULES if name not in done]


def stale_modules() -> list[str]:
    """Compiled hot-path modules whose source beside them is newer: the process runs older code than it shows."""
    out = []
    for name in compiled_modules():
        built = getattr(importlib.import_module(name), "__file__", "") or ""
        source = os.path.join(os.path.dirname(built), name.rpartition(".")[2] + ".py")
        try:
            if os.stat(source).st_mtime - os.stat(built).st_mtime > STALE_AFTER_S:
                out.append(name)
        except OSError:
            continue  # no source beside it (or no file at all): nothing to be older than
    return out


@cache
def hot_path_doc() -> dict[str, Any]:
    """The build as /ready, the acks and `glassmesh status` show it."""
    interpreted, stale = interpreted_modules(), stale_modules()
    build = "stale" if stale else hot_path()
    return {"build": build, "compiled": len(HOT_MODULES) - len(interpreted), "of": len(HOT_MODULES),
            "interpreted": interpreted, "stale": stale}


def hot_path_warning() -> str | None:
    """The WARNING a proxy prints at start when its request path is not all compiled from its current source."""
    doc = hot_path_doc()
    parts = []
    if doc["interpreted"]:
        every = len(doc["interpreted"]) == len(HOT_MODULES)
        what = "all of the request path" if every else ", ".join(doc["interpreted"])
        parts.append(f"runs {what} interpreted (pure Python, {doc['compiled']} of {doc['of']} hot modules "
                     f"compiled): {INTERPRETED_COST}. Install the wheel `make dist` builds (it carries them "
                     f"compiled), or reinstall with gcc and the Python headers")
    if doc["stale"]:
        parts.append(f"runs compiled modules older than their source beside them ({', '.join(doc['stale'])}): "
                     f"the code that runs is not the code on disk; rebuild (`make venv`) or reinstall")
    if not parts:
        return None
    return "WARNING: glassmesh proxy " + "; it also ".join(parts) + "."


def warn_if_interpreted() -> None:
    """Print hot_path_warning() on stderr (the journal, under systemd), if there is one."""
    msg = hot_path_warning()
    if msg:
        print(msg, file=sys.stderr, flush=True)
