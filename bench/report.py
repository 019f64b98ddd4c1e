"""Turns the raw runs into the one markdown table (value, ratio to direct, ratio to nginx).

Ratios are computed within each repetition (the configurations of one repetition ran minutes
apart on the same machine, so drift hits them alike) and the median over repetitions is shown;
values are medians over repetitions.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable

COLS = ["direct", "glassmesh", "nginx", "haproxy"]
LABELS = {"direct": "direct", "glassmesh": "glassmesh", "nginx": "nginx pair", "haproxy": "HAProxy pair"}


def _num(x) -> float | None:
    return x if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)) else None


Series = dict[int, float | None]   # repetition -> value (None where that run failed)


def _series(R: dict, row: str, cfg: str, field: str) -> Series:
    out: Series = {}
    for i, r in enumerate(R["runs"].get(row, {}).get(cfg, [])):
        rep = r.get("rep", i)
        if r.get("error"):
            out[rep] = None
        elif r.get(field) is not None:      # absent for direct where it has no meaning (proxy CPU)
            out[rep] = _num(r.get(field))
    return out


def _added_p50(R: dict, cfg: str) -> Series:
    a, d = _series(R, "c1", cfg, "p50_ms"), _series(R, "c1", "direct", "p50_ms")
    return {k: None if x is None or d.get(k) is None else (x - d[k]) * 1000 for k, x in a.items() if k in d}


def _rss(R: dict, cfg: str, which: str) -> Series:
    c = R["configs"].get(cfg, {})
    vals = [v for v in (c.get(which) or {}).values() if _num(v) is not None]
    return {0: max(vals)} if vals else {}


# (label, better, formatter, series(R, cfg), has ratio to direct)
Metric = tuple[str, str, Callable[[float], str], Callable[[dict, str], Series], bool]


def _f_int(v: float) -> str:
    return f"{v:,.0f}"


def _f_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _f_1(v: float) -> str:
    return f"{v:.1f}"


def _f_2(v: float) -> str:
    return f"{v:.2f}"


def metrics(R: dict) -> list[Metric]:
    m = R["meta"]
    s = lambda row, f: (lambda R, c: _series(R, row, c, f))  # noqa: E731
    rows: list[Metric] = []
    if "c1" in R["runs"]:
        rows += [
            ("req/s, 1 connection", "higher", _f_int, s("c1", "rps"), True),
            ("p50 ms, 1 connection", "lower", _f_ms, s("c1", "p50_ms"), True),
            ("p99 ms, 1 connection", "lower", _f_ms, s("c1", "p99_ms"), True),
            ("p99.9 ms, 1 connection", "lower", _f_ms, s("c1", "p999_ms"), True),
            ("added p50 us over direct, 1 connection", "lower", _f_int, _added_p50, False),
        ]
    if "c32" in R["runs"]:
        rows += [
            ("req/s, 32 connections", "higher", _f_int, s("c32", "rps"), True),
            ("p50 ms, 32 connections", "lower", _f_ms, s("c32", "p50_ms"), True),
            ("p99 ms, 32 connections", "lower", _f_ms, s("c32", "p99_ms"), True),
            ("p99.9 ms, 32 connections", "lower", _f_ms, s("c32", "p999_ms"), True),
        ]
    if "rate" in R["runs"]:
        r = m["rate"]
        rows += [
            (f"p50 ms at fixed {r:,} req/s (open loop)", "lower", _f_ms, s("rate", "p50_ms"), True),
            (f"p99 ms at fixed {r:,} req/s (open loop)", "lower", _f_ms, s("rate", "p99_ms"), True),
            (f"p99.9 ms at fixed {r:,} req/s (open loop)", "lower", _f_ms, s("rate", "p999_ms"), True),
        ]
    if "big" in R["runs"]:
        c = m["big_conns"]
        rows += [
            (f"1 MiB responses: Gbit/s, {c} connections", "higher", _f_2, s("big", "gbit_s"), True),
            (f"1 MiB responses: p99 ms, {c} connections", "lower", _f_ms, s("big", "p99_ms"), True),
        ]
    if "conn" in R["runs"]:
        rows += [("new connections/s (Connection: close, 32 conns)", "higher", _f_int, s("conn", "rps"), True)]
    if "tcp" in R["runs"]:
        b = m["tcp_bytes"]
        size = f"{b / 2**30:g} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"
        rows += [(f"TCP bulk Gbit/s ({size}, one connection)", "higher", _f_2, s("tcp", "gbit_s"), True)]
    if "c32" in R["runs"]:
        rows += [("proxy CPU us per request, both proxies, 32 conns", "lower", _f_1,
                  s("c32", "proxy_cpu_us_per_req"), False),
                 # Both pairs settle near one core between them (the two proxies wake each other
                 # and share a core much of the time), so req/s at 32 connections follows CPU per request.
                 ("proxy CPU cores busy, both proxies, 32 conns", "", _f_2,
                  lambda R, c: {} if c == "direct" else _series(R, "c32", c, "proxy_cpu_cores"), False)]
    if "tcp" in R["runs"]:
        rows += [("proxy CPU s per GiB of TCP, both proxies", "lower", _f_2, s("tcp", "proxy_cpu_s_per_gib"), False)]
    rows += [
        ("proxy RSS MB idle (larger of the two)", "lower", _f_1, lambda R, c: _rss(R, c, "rss_idle_mb"), False),
        ("proxy RSS MB peak under load (larger proxy)", "lower", _f_1, lambda R, c: _rss(R, c, "rss_peak_mb"), False),
    ]
    return rows


def _median(xs: Series) -> float | None:
    v = [x for x in xs.values() if x is not None]
    return statistics.median(v) if v else None


def _ratio(a: Series, b: Series) -> float | None:
    """Median of the per-repetition ratios; ratio of medians when no repetition has both."""
    pairs = _ratios(a, b)
    if pairs:
        return statistics.median(pairs)
    ma, mb = _median(a), _median(b)
    return ma / mb if ma is not None and mb else None


def _ratios(a: Series, b: Series) -> list[float]:
    return [x / b[k] for k, x in a.items() if x is not None and b.get(k) not in (None, 0)]


# The rows whose ratio to the nginx pair the issues set targets on (rates, closed loop).
_SPREAD_ROWS = (("c1", "req/s, 1 connection"), ("c32", "req/s, 32 connections"),
                ("conn", "new connections/s"))


def spread(R: dict) -> list[str]:
    """How far one repetition's ratio to the nginx pair strays from another's, per rate row.

    A median over a few repetitions reads as one figure; on a shared 2-core machine the
    nginx pair's own req/s moves several percent between repetitions minutes apart, and
    a target of ">= 1.0x" cannot be judged from a median that sits within that spread.
    """
    out = []
    for row, label in _SPREAD_ROWS:
        if row not in R["runs"]:
            continue
        for c in ("glassmesh", "haproxy"):
            if c not in R["configs"] or "nginx" not in R["configs"]:
                continue
            a, n = _series(R, row, c, "rps"), _series(R, row, "nginx", "rps")
            rs = _ratios(a, n)
            if len(rs) < 2:
                continue
            nv = [v for v in n.values() if v]
            own = f"; the nginx pair's own req/s {min(nv):,.0f}-{max(nv):,.0f}" if nv else ""
            out.append(f"{label}, {LABELS[c]} / nginx pair per repetition: {_fr(min(rs))}-{_fr(max(rs))} "
                       f"(median {_fr(statistics.median(rs))}, {len(rs)} repetitions{own})")
    return out


def _fr(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def table(R: dict) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in COLS if c in R["configs"]]
    header = ["metric", "better"] + [LABELS[c] for c in cols]
    body = []
    status = ["status", ""]
    for c in cols:
        info = R["configs"][c]
        rf = info.get("row_failed") or {}
        status.append("FAILED" if info.get("failed") else ("ok; cannot run: " + ", ".join(rf) if rf else "ok"))
    body.append(status)
    for label, better, fmt, series, vs_direct in metrics(R):
        line = [label, better]
        ser = {c: series(R, c) for c in cols}
        for c in cols:
            v = _median(ser[c])
            if v is None:
                line.append("failed" if ser[c] or R["configs"][c].get("failed") else "-")
                continue
            parts = []
            if vs_direct and c != "direct" and "direct" in ser:
                rd = _ratio(ser[c], ser["direct"])
                parts.append(f"{_fr(rd)} d" if rd is not None else "- d")
            if label.startswith("added") and c not in ("nginx", "direct") and "nginx" in ser:
                vn = _median(ser["nginx"])           # the target is absolute: within 50 us of nginx's
                parts.append(f"{v - vn:+.0f} us vs n" if vn is not None else "- n")
            elif c != "nginx" and "nginx" in ser:
                rn = _ratio(ser[c], ser["nginx"])
                if rn is not None and not (c == "direct" and not vs_direct):
                    parts.append(f"{_fr(rn)} n")
            bad = sum(1 for r in ser[c].values() if r is None)
            mark = f" ({bad} run failed)" if bad else ""
            line.append(fmt(v) + (f" ({', '.join(parts)})" if parts else "") + mark)
        body.append(line)
    return header, body


def markdown(R: dict) -> str:
    m = R["meta"]
    header, body = table(R)
    out = [
        f"# glassmesh bench, {m['started']}",
        "",
        f"{m['nproc']} cores; wrk -t1, {m['dur']} s per run, {m['reps']} repetition(s), medians; "
        f"every proxy 1 worker; mTLS TLS 1.3 ECDSA P-256 between the proxies; app = 1-worker nginx "
        f"returning \"ok\\n\". Cells: value (ratio to direct `d`, ratio to the nginx pair `n`), "
        f"ratios paired within each repetition.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    out += ["| " + " | ".join(r) + " |" for r in body]
    notes = []
    for c, info in R["configs"].items():
        if info.get("failed"):
            notes.append(f"- **{LABELS.get(c, c)} failed**: {info['failed']}")
        for row, why in (info.get("row_failed") or {}).items():
            notes.append(f"- {LABELS.get(c, c)}, {row} row not run: {why}")
        if info.get("note"):
            notes.append(f"- {LABELS.get(c, c)}: {info['note']}")
    for row, per in R["runs"].items():
        for c, runs in per.items():
            errs = [r["error"] for r in runs if r.get("error")]
            if errs:
                kinds = {re.sub(r"\d+", "N", e) for e in errs}
                more = f" (and {len(kinds) - 1} other kinds of error)" if len(kinds) > 1 else ""
                notes.append(f"- {row} / {LABELS.get(c, c)}: {len(errs)} of {len(runs)} runs failed: "
                             f"{errs[0]}{more}")
    notes += [f"- spread: {line}" for line in spread(R)]
    other = [r.get("other_cpu_cores") for per in R["runs"].values() for runs in per.values() for r in runs
             if _num(r.get("other_cpu_cores")) is not None]
    if other:
        notes.append(f"- noise: busy cores not explained by the proxies, app or client during runs: "
                     f"median {statistics.median(other):.2f}, max {max(other):.2f} (other tenants, softirq)")
    notes.append(f"- certificates: {m['certs']}")
    notes.append("- versions: " + "; ".join(f"{k}: {v}" for k, v in m["versions"].items()))
    out += ["", "Notes:"] + notes
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the sections beside the table

_FMT = {"int": _f_int, "ms": _f_ms, "1": _f_1, "2": _f_2}


def section_markdown(sec: dict) -> str:
    """One section (bench/sections.py): a column per configuration, ratios (or differences) to the first."""
    if "parts" in sec:
        return "\n".join(section_markdown(p) for p in sec["parts"])
    keys = [v["key"] for v in sec["variants"]]
    labels = {v["key"]: v["label"] for v in sec["variants"]}
    base = sec["base"]
    R = {"runs": sec["runs"]}
    header = ["metric", "better"] + [labels[k] for k in keys]
    body = [["status", ""] + ["FAILED" if v.get("failed") else "ok" for v in sec["variants"]]]
    for label, better, row, fld, fmt, mode in sec["metrics"]:
        if row not in sec["runs"]:
            continue
        ser = {k: _series(R, row, k, fld) for k in keys}
        if not any(_median(s) is not None for s in ser.values()):
            continue
        line = [label, better]
        for k in keys:
            v = _median(ser[k])
            if v is None:
                line.append("failed" if ser[k] else "-")
                continue
            cell = _FMT[fmt](v)
            if k != base and mode == "ratio":
                r = _ratio(ser[k], ser[base])
                cell += f" ({_fr(r)})" if r is not None else ""
            elif k != base and mode == "diff":
                pairs = [x - ser[base][i] for i, x in ser[k].items()
                         if x is not None and ser[base].get(i) is not None]
                if pairs:
                    cell += f" ({statistics.median(pairs):+.{0 if fmt == 'int' else 1 if fmt in ('1', 'ms') else 2}f})"
            bad = sum(1 for x in ser[k].values() if x is None)
            line.append(cell + (f" ({bad} run failed)" if bad else ""))
        body.append(line)
    out = [f"## {sec['title']}", ""] + list(sec.get("intro") or []) + [""]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    notes = list(sec.get("notes") or [])
    for k, per in sorted((sec.get("per_worker") or {}).items()):
        for proxy, d in per.items():
            if d.get("cpu_pct") and len(d["cpu_pct"]) > 1:
                req = "/".join(f"{x:g}" for x in d["req_pct"]) if d.get("req_pct") else "unreadable"
                notes.append(f"{labels[k]}, {proxy}: requests per worker {req} %, "
                             f"CPU per worker {'/'.join(f'{x:g}' for x in d['cpu_pct'])} % (median repetition)")
    for row, per in sec["runs"].items():
        for k, runs in per.items():
            errs = [r["error"] for r in runs if r.get("error")]
            if errs:
                notes.append(f"{row} / {labels.get(k, k)}: {len(errs)} of {len(runs)} runs failed: {errs[0]}")
    other = [r.get("other_cpu_cores") for row, per in sec["runs"].items() if row != "info"
             for runs in per.values() for r in runs if _num(r.get("other_cpu_cores")) is not None]
    if other:
        notes.append(f"noise: busy cores not explained by the proxies, app or client: median "
                     f"{statistics.median(other):.2f}, max {max(other):.2f}")
    if notes:
        out += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def header(R: dict) -> str:
    """The top of results.md when the main table was not run (--only without `table`)."""
    m = R["meta"]
    return "\n".join([
        f"# glassmesh bench, {m['started']} ({', '.join(m.get('parts', []))})", "",
        f"{m['nproc']} cores; wrk -t1, {m['dur']} s per run, {m['reps']} repetition(s), medians; mTLS TLS 1.3 "
        f"ECDSA P-256 between the proxies; app = 1-worker nginx returning \"ok\\n\".", "",
        f"- certificates: {m['certs']}",
        "- versions: " + "; ".join(f"{k}: {v}" for k, v in m["versions"].items()), ""])
