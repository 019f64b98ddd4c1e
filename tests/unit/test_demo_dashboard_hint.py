"""The demo's live view ends by telling the user how to look inside: tap, capture, trace, the dashboard."""

from __future__ import annotations

from rich.console import Console

from glassmesh.demo.runner import _table


def test_the_live_view_ends_with_tap_capture_trace_and_the_dashboard_command() -> None:
    rid = "4f2a9c1e0b7d3a5c6e8f1a2b"
    table = _table([], {"done": 10, "ok": 10, "failed": 0, "recent_request_id": rid}, None, 3.0)
    console = Console(width=250, record=True, color_system=None)
    console.print(table.caption)
    lines = [line.rstrip() for line in console.export_text().splitlines() if line.strip()]
    assert lines[-4] == "Ctrl-C stops every process"
    assert lines[-3] == ("look inside: glassmesh tap --from a --to b --headers   |   "
                         "glassmesh capture --link a:b --seconds 5 -w a-b.pcap")
    assert lines[-2] == f"follow a request A just made to B across the hops: glassmesh trace {rid}"
    assert lines[-1] == "see it in your browser (service graph, link matrix, live tap): glassmesh dashboard"


def test_no_request_to_trace_yet_no_trace_line() -> None:
    table = _table([], {"done": 0, "ok": 0, "failed": 0}, None, 1.0)
    assert "trace" not in str(table.caption) and str(table.caption).endswith("glassmesh dashboard")
