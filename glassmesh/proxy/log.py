"""The proxy's one line of operator-facing text per event, on stderr.

Its own module, at the bottom of the import graph, so that every proxy module
(runtime, tcp, enroll, health, watch) can say something without importing the
runtime, which imports the pools, which the request path imports. Each line
has a UTC timestamp and a level, or is one JSON object with `--log-format
json` (glassmesh/logfmt.py).
"""

from __future__ import annotations

from glassmesh.logfmt import write

LOGGER = "glassmesh proxy"


def log(msg: str, level: str = "info") -> None:
    write(LOGGER, msg, level)


def warn(msg: str) -> None:
    write(LOGGER, msg, "warning")


def error(msg: str) -> None:
    write(LOGGER, msg, "error")
