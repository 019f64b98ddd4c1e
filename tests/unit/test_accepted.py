"""What a listener remembers of the connections it accepted (proxy/accepted.py), without sockets."""

from __future__ import annotations

from typing import Any

from glassmesh.proxy.accepted import Accepted


class Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class Proto:
    def __init__(self, up: bool = True) -> None:
        self.transport: Any = Transport() if up else None


def test_open_and_handshaking_connections_are_kept_closed_ones_forgotten() -> None:
    made: list[Proto] = []

    def factory() -> Proto:
        p = Proto(up=len(made) % 3 != 2)  # every third one still in its TLS handshake
        made.append(p)
        return p

    acc = Accepted(factory, 60.0)
    for _ in range(1000):
        assert acc.accept() is made[-1]
    for p in made[:900]:
        if p.transport is not None:
            p.transport.closing = True
    open_now = acc.open_conns(60.0)
    assert len(open_now) == sum(1 for p in made if p.transport is None or not p.transport.closing)
    assert acc.open_conns(0.0) == [p for p in made[900:] if p.transport is not None], \
        "past the handshake timeout, one without a transport no longer counts"


def test_the_record_stays_bounded_by_the_open_connections() -> None:
    acc = Accepted(Proto, 60.0)
    for _ in range(10_000):
        acc.accept().transport.closing = True  # each closes before the next comes
    assert len(acc.protos) <= 64 + 1 and len(acc.times) == len(acc.protos)
    assert acc.open_conns(60.0) == []


def test_a_new_factory_serves_the_next_connection() -> None:
    acc = Accepted(lambda: "old", 60.0)
    assert acc.accept() == "old"
    acc.factory = lambda: "new"
    assert acc.accept() == "new"
