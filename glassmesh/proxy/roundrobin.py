"""Round-robin choice over a fixed list (compiled with the hot path: it runs once per request)."""

from __future__ import annotations

from typing import Any


class RoundRobin:
    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.i = 0

    def pick(self) -> Any:
        items = self.items
        n = len(items)
        if not n:
            return None
        i = self.i + 1
        if i >= n:
            i = 0
        self.i = i
        return items[i]
