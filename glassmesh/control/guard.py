"""The blast-radius guard: never push a change that wipes out a service. Pure: no I/O, no clock.

Most mesh outages are a control plane faithfully pushing bad news: a health
checker that lost its network, an apply with a typo, a registry that
restarted empty. Whatever the cause, the symptom is the same: many endpoints
of one service vanish at once. Such a change is held (the old endpoints stay
in what is pushed) until an operator releases it or drains the service on
purpose. Each service is judged alone, so a held change never blocks others.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

InstanceKey = tuple[str, str]  # (host, app address)


@dataclass(frozen=True)
class Held:
    """A change to one service that was not pushed, and why."""

    service: str
    cause: str
    old: tuple[InstanceKey, ...]  # what stays pushed
    new: tuple[InstanceKey, ...]  # what would have been pushed

    def to_json(self) -> dict[str, object]:
        return {"service": self.service, "cause": self.cause,
                "old": [list(k) for k in self.old], "new": [list(k) for k in self.new]}


@dataclass(frozen=True)
class Decision:
    push: dict[str, list[InstanceKey]]  # service -> the endpoints that go out
    held: dict[str, Held] = field(default_factory=dict)


def _fmt(keys: Iterable[InstanceKey], limit: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(f"{h}/{a}" for h, a in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def judge(service: str, old: Collection[InstanceKey], new: Collection[InstanceKey], max_drop: float,
          drained: bool) -> str | None:
    """The cause for holding this change, or None when it may go out."""
    if not old or drained:
        return None
    removed = set(old) - set(new)
    if not new:
        return (f"would remove every endpoint of {service!r} ({len(old)}: {_fmt(removed)}); "
                f"drain the service to do this on purpose")
    share = len(removed) / len(old)
    if share > max_drop:
        return (f"would remove {len(removed)} of {len(old)} endpoints of {service!r} at once "
                f"({share:.0%} > max_endpoint_drop {max_drop:.0%}): {_fmt(removed)}")
    return None


def guard(
    old: Mapping[str, Iterable[InstanceKey]],
    new: Mapping[str, Iterable[InstanceKey]],
    *,
    max_drop: Mapping[str, float],
    drained: Collection[str] = (),
    default_max_drop: float = 0.5,
) -> Decision:
    """Decide, per service in `new`, whether its new endpoints go out or its old ones stay.

    old: what was last pushed; new: what compile wants to push now. A service
    only in `old` was removed from the config on purpose and is not judged.
    """
    push: dict[str, list[InstanceKey]] = {}
    held: dict[str, Held] = {}
    for service, keys in new.items():
        n = sorted(set(keys))
        o = sorted(set(old.get(service, ())))
        cause = judge(service, o, n, max_drop.get(service, default_max_drop), service in drained)
        if cause is None:
            push[service] = n
        else:
            push[service] = o
            held[service] = Held(service, cause, tuple(o), tuple(n))
    return Decision(push, held)
