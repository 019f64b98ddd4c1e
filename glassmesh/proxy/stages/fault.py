"""Fault injection for a route: a delay, or an abort with a status, for a share of requests."""

from __future__ import annotations

from random import random


class FaultStage:
    def __init__(self, delay_s: float, delay_percent: float, abort_status: int, abort_percent: float) -> None:
        self.delay_s = delay_s
        self.delay_p = delay_percent / 100.0
        self.abort_status = abort_status  # 0: no abort
        self.abort_p = abort_percent / 100.0 if abort_status else 0.0
        self.delayed = 0  # counts, for metrics
        self.aborted = 0

    def decide(self) -> tuple[float, int]:
        """(delay in seconds, abort status or 0) for one request; independent draws for each."""
        delay = 0.0
        status = 0
        if self.delay_p > 0.0 and random() < self.delay_p:
            delay = self.delay_s
            self.delayed += 1
        if self.abort_p > 0.0 and random() < self.abort_p:
            status = self.abort_status
            self.aborted += 1
        return delay, status
