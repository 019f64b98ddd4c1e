"""Build glue: compiles the proxy's hot path with mypyc when it can.

The request path (HTTP/1.1 handling, the mux, routing, pools) is plain,
typed Python; mypyc turns it into C extension modules, which cut the
interpreter's instructions per proxied request by about 40% (callgrind on
bench/micro.py). The same source runs unchanged without it: GLASSMESH_PURE=1,
or a machine where the C build fails, gets a pure-Python install, and
`glassmesh proxy` says at start which one it runs. GLASSMESH_REQUIRE_COMPILED=1
turns a failed build into an error instead.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT = [
    "glassmesh/protocols/http1.py",
    "glassmesh/protocols/http1_codec.py",
    "glassmesh/protocols/mux.py",
    "glassmesh/protocols/mux_head.py",
    "glassmesh/proxy/http.py",
    "glassmesh/proxy/sides.py",
    "glassmesh/proxy/pool.py",
    "glassmesh/proxy/mux.py",
    "glassmesh/proxy/linkstats.py",
    "glassmesh/proxy/ring.py",
    "glassmesh/proxy/roundrobin.py",
    "glassmesh/proxy/routing.py",
    "glassmesh/proxy/tcp.py",
    "glassmesh/proxy/chain.py",
    "glassmesh/proxy/accepted.py",
    "glassmesh/proxy/observer.py",
    "glassmesh/proxy/stages/endpoint.py",
    "glassmesh/proxy/stages/eject.py",
    "glassmesh/proxy/stages/balance.py",
    "glassmesh/proxy/stages/split.py",
    "glassmesh/proxy/stages/route.py",
    "glassmesh/proxy/stages/retry.py",
    "glassmesh/proxy/stages/overload.py",
    "glassmesh/proxy/stages/fault.py",
    "glassmesh/proxy/stages/mirror.py",
]
STRICT = os.environ.get("GLASSMESH_REQUIRE_COMPILED", "") not in ("", "0")


def _fallback(why: str) -> None:
    if STRICT:
        raise SystemExit(f"glassmesh: compiling the hot path failed: {why}")
    print(f"glassmesh: not compiling the hot path ({why}); installing pure Python", file=sys.stderr)


class AllOrNothingBuildExt(build_ext):
    """Build every hot-path extension or none: a half-built set would not import."""

    failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - a compiler error surfaces as several distutils types
            _fallback(f"{type(e).__name__}: {e}")
            self.failed = True
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return [] if self.failed else super().get_outputs()

    def get_output_mapping(self) -> dict[str, str]:
        return {} if self.failed else super().get_output_mapping()


def _builds_in_place() -> bool:
    """An editable install or `build_ext --inplace`: the compiled modules go into the source tree.

    Only then are the tree's compiled modules this build's business: `make dist`
    (python -m build) runs this file in the tree for the sdist too, and must
    leave the developer's in-place build alone.
    """
    argv = sys.argv[1:]
    return bool({"editable_wheel", "develop"} & set(argv)) or (
        "build_ext" in argv and bool({"--inplace", "-i"} & set(argv)))


def _clear_inplace() -> None:
    """Remove compiled modules left in the tree by an earlier build: they would shadow the source."""
    if not _builds_in_place():
        return
    here = os.path.dirname(os.path.abspath(__file__))
    stale = glob.glob(os.path.join(here, "glassmesh_hot__mypyc.*.so"))
    for src in HOT:
        stale += glob.glob(os.path.join(here, src[:-3] + ".*.so"))
    for path in stale:
        os.remove(path)


def ext_modules() -> list:
    _clear_inplace()
    if os.environ.get("GLASSMESH_PURE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify

        exts = mypycify(["--config-file", "mypyc.ini", *HOT], opt_level="3", debug_level="0",
                        group_name="glassmesh_hot")
        if sys.platform != "win32":
            # The hot path's functions call each other thousands of times a request. Exported with default
            # visibility from a -fPIC library, each call went through the PLT and none could be inlined
            # (another library could interpose it). Only PyInit_* needs exporting (Python marks it so):
            # -1.7% instructions a request (bench/instructions.py), -3.4% CPU per request in time (pinned
            # pairs in turn, 5 runs each).
            for e in exts:
                e.extra_compile_args = [*(e.extra_compile_args or []), "-fvisibility=hidden",
                                        "-fno-semantic-interposition"]
        return exts
    except BaseException as e:  # noqa: BLE001 - mypy exits with SystemExit on type errors
        _fallback(f"{type(e).__name__}: {e}")
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": AllOrNothingBuildExt})
