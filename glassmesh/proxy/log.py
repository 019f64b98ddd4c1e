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


_defects = 0


def defect(where: str, exc: BaseException) -> None:
    """An exception of glassmesh's own code that a request ran into: the traceback, for a bug report.

    Bounded: the first 5, then every 1,000th (one defect hit by every request must not flood the log).
    """
    global _defects
    _defects += 1
    if _defects > 5 and _defects % 1000:
        return
    import traceback  # only when there is one to print

    tb = "".join(traceback.format_exception(exc)).rstrip()
    write(LOGGER, f"{where}: {type(exc).__name__}: {exc} (defect #{_defects} in glassmesh; please report it "
                  f"with this traceback)\n{tb}", "error")
