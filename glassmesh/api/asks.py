"""The ask channel on the wire: how the control plane asks a proxy something.

Proxies are the control plane's clients (they long-poll their snapshot), and
a proxy's admin port is loopback-only, so the control plane never dials a
proxy. An operator's question about a host (a tap, a trace's records, the
endpoints a caller sees, link counters) goes the same way round: the proxy
holds `GET /v1/hosts/{host}/asks` open on each replica, and posts what it
finds to `POST /v1/hosts/{host}/asks/{id}`, in batches, until it is done or
told the asker left (`more: false`). Both calls carry the host identity
(mTLS), and a host can answer only the asks addressed to it.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import msgspec

# Between two releases of glassmesh: tolerant (a newer peer's extra fields are ignored; see api/wire.py).
_S: dict[str, Any] = {"kw_only": True}

POLL_WAIT_S = 25.0  # the longest a proxy's asks long-poll is held open with nothing to ask
MAX_EVENTS = 1000  # per answer post
MAX_ANSWER_BYTES = 1 << 20  # per answer post: a stream posts more often instead
KIND_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


class Ask(msgspec.Struct, **_S):
    id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,64}$")]
    kind: Annotated[str, msgspec.Meta(pattern=KIND_PATTERN)]
    args: dict[str, Any] = {}


class AskList(msgspec.Struct, **_S):
    asks: list[Ask]


class AnswerPost(msgspec.Struct, **_S):
    """A batch of an ask's events; `done` ends it, `error` ends it with the proxy's reason."""

    events: Annotated[list[dict[str, Any]], msgspec.Meta(max_length=MAX_EVENTS)] = []
    done: bool = False
    error: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class AnswerReply(msgspec.Struct, **_S):
    more: bool


def asks_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/asks"


def answer_path(host: str, ask_id: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/asks/{quote(ask_id, safe='')}"
