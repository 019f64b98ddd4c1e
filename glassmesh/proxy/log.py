"""The proxy's one line of operator-facing text per event, on stderr.

Its own module, at the bottom of the import graph, so that every proxy module
(runtime, tcp, enroll, health, watch) can say something without importing the
runtime, which imports the pools, which the request path imports.
"""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    sys.stderr.write(f"glassmesh proxy: {msg}\n")
    sys.stderr.flush()
