"""How the daemons' log lines look: a UTC timestamp, a level, who speaks, the message; or one JSON object.

text (the default), for people and grep:

    2026-12-06T01:02:03.456Z INFO glassmesh proxy: host host1 serving snapshot version 3: ...

json (`--log-format json`), for Loki, Elasticsearch or `jq`, one object per line:

    {"ts": "2026-12-06T01:02:03.456Z", "level": "info", "logger": "glassmesh proxy", "msg": "...", "pid": 4242}

Times are UTC with a `Z`, as everything the CLI prints (cli/output.py), so that
the logs of hosts in different zones line up. Its own module with no imports of
the project, so that the proxy (which never imports the control plane) and the
control plane format their lines the same way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

FORMATS = ("text", "json")
_state = {"format": "text"}


def set_format(fmt: str) -> None:
    """`text` or `json`, for every line this process writes from now on (forked workers inherit it)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _state["format"] = fmt


def get_format() -> str:
    return _state["format"]


def stamp(t: float) -> str:
    """Unix seconds as `2026-12-06T01:02:03.456Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def line(logger: str, level: str, msg: str, t: float | None = None) -> str:
    """One log line (no newline) in the format in force."""
    t = time.time() if t is None else t
    if _state["format"] == "json":
        return json.dumps({"ts": stamp(t), "level": level.lower(), "logger": logger, "msg": msg, "pid": os.getpid()},
                          ensure_ascii=False)
    return f"{stamp(t)} {level.upper()} {logger}: {msg}"


def write(logger: str, msg: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Write one line now (stderr unless told), flushed: a daemon's log is read while it runs."""
    out = sys.stderr if stream is None else stream
    out.write(line(logger, level, msg) + "\n")
    out.flush()


class Formatter(logging.Formatter):
    """The `logging` module's records in the same format (the control plane logs through `logging`)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return line(record.name, record.levelname, msg, record.created)


def setup_logging(level: int, fmt: str = "text") -> None:
    """Route the root logger to stderr in `fmt` at `level` (and set the format for `write`)."""
    set_format(fmt)
    handler = logging.StreamHandler()
    handler.setFormatter(Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
