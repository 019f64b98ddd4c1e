"""The demo's live view ends by telling the user how to open the dashboard, with the exact command."""

from __future__ import annotations

from rich.console import Console

from glassmesh.demo.runner import _table


def test_the_live_view_ends_with_the_dashboard_command() -> None:
    console = Console(width=200, record=True, color_system=None)
    console.print(_table([], {"done": 10, "ok": 10, "failed": 0}, None, 3.0))
    lines = [line.rstrip() for line in console.export_text().splitlines() if line.strip()]
    assert lines[-2] == "Ctrl-C stops every process"
    assert lines[-1] == "see it in your browser (service graph, link matrix, live tap): glassmesh dashboard"
