"""`glassmesh check`: a doctor for the mesh, one line per check, a fix for each failure, non-zero when one fails.

It asks every control-plane replica for `GET /v1/check` (the replicas given
with --control, and every live replica the store lists), which is how it
learns each one is reachable, and judges the answers here, because some
checks need this side of the call: the client's clock against each
replica's, and the certificate each replica presents in the handshake.
Judging is a pure function of what was gathered (`judge`), so each verdict
is unit-tested apart from the network.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed
(a deploy gate), 5 when no replica could be asked at all, 4 when the
credential is refused (see cli/exits.py).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

import click
from rich.text import Text

from glassmesh.api import credential
from glassmesh.cli._control_client import control_option, control_urls, operator_credential, out
from glassmesh.cli.exits import FAILED, Refused, Unreachable
from glassmesh.cli.output import emit, output_option, utc

DAY = 86400.0
CLOCK_WARN_S = 2.0  # logs from two hosts no longer line up
CLOCK_FAIL_S = 60.0  # certificates start 5 minutes back (api/certs.py CLOCK_SKEW): act well before that
CA_FAIL_S, CA_WARN_S = 30 * DAY, 180 * DAY
SERVER_FAIL_S, SERVER_WARN_S = DAY, 30 * DAY
CREDENTIAL_WARN_S = 7 * DAY
BEHIND_FAIL_S = 10.0  # a host this long behind its latest snapshot is not just receiving it


@dataclass
class Check:
    name: str
    state: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass
class Answer:
    """One replica, as asked: its /v1/check document, or why it could not be asked."""

    url: str
    doc: dict[str, Any] | None = None
    error: str = ""
    sent: float = 0.0  # this machine's clock when the request left ...
    received: float = 0.0  # ... and when its answer came back
    cert_not_after: float | None = None  # of the certificate it presented
    replica: str = ""  # its id as the store lists it (for one found there)


def _address(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port or 443}"


def probe(url: str, cred: credential.Credential, timeout: float = 10.0) -> Answer:
    """Ask one replica; never raises for a replica that cannot answer (that is a finding), only for a refusal."""
    ans = Answer(url)
    peer: dict[str, Any] = {}
    ans.sent = time.time()
    try:
        status, body = credential.call(url, cred, "GET", "/v1/check", timeout=timeout, peer=peer)
    except credential.CredentialError as e:
        ans.error = str(e)
        return ans
    except ssl.SSLError as e:
        ans.error = f"TLS failed: {e.reason or e}"
        return ans
    except OSError as e:
        ans.error = f"cannot connect: {e.strerror or e}"
        return ans
    ans.received = time.time()
    if peer.get("notAfter"):
        ans.cert_not_after = float(ssl.cert_time_to_seconds(peer["notAfter"]))
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        ans.error = f"answered {status} with something that is not JSON"
        return ans
    if status in (401, 403):
        raise Refused(str(doc.get("error", f"HTTP {status}")))
    if status == 404:
        ans.error = "answered 404 to /v1/check: it runs a release without `glassmesh check` (upgrade it)"
    elif status != 200:
        ans.error = f"answered HTTP {status}: {doc.get('error', '')}".rstrip(": ")
    else:
        ans.doc = doc
    return ans


def gather(control: str, cred: credential.Credential) -> list[Answer]:
    """Every replica given, then every other live replica the first answer lists."""
    answers = [probe(u, cred) for u in control_urls(control)]
    asked = {_address(a.url) for a in answers}
    for a in list(answers):
        for r in (a.doc or {}).get("status", {}).get("replicas", []):
            listen = r.get("listen")
            if listen and listen not in asked:
                asked.add(listen)
                ans = probe(f"https://{listen}", cred)
                ans.replica = str(r.get("id", ""))
                answers.append(ans)
    return answers


# --------------------------------------------------------------------------- judging


def _ago(s: float) -> str:
    s = abs(s)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h" \
        if s < 2 * DAY else f"{s / DAY:.0f} days"


def _expiry(what: str, not_after: float, now: float, fail_s: float, warn_s: float, fix: str) -> Check:
    left = not_after - now
    when = f"{'expired' if left <= 0 else 'expires'} {utc(not_after)} ({'' if left > 0 else 'for '}{_ago(left)}" \
           f"{' from now' if left > 0 else ''})"
    if left <= fail_s:
        return Check(what, "fail", when, fix)
    return Check(what, "warn" if left <= warn_s else "ok", when, fix if left <= warn_s else "")


def _replicas(answers: list[Answer]) -> list[Check]:
    out_ = []
    for a in answers:
        if a.doc is None:
            name = f"{a.replica} ({a.url})" if a.replica else a.url
            out_.append(Check(f"control plane {name}", "fail", a.error + (" (the store lists it as live)"
                                                                          if a.replica else ""),
                              "start that replica (`glassmesh control ...`), or leave it out of --control / "
                              "GLASSMESH_CONTROL; a stopped replica leaves the list within 15 s"))
        else:
            d = a.doc
            ms = (a.received - a.sent) * 1000
            out_.append(Check(f"control plane {d['replica']}", "ok",
                              f"{a.url} answered in {ms:.0f} ms (config version {d['status']['config_version']})"))
    return out_


def _clocks(answers: list[Answer], hosts: dict[str, dict[str, Any]], now: float) -> Check:
    off: list[tuple[str, float]] = []  # (who, seconds ahead; negative: behind)
    notes = []
    for a in answers:
        if a.doc is None:
            continue
        mid, slack = (a.sent + a.received) / 2, (a.received - a.sent) / 2
        skew = a.doc["now"] - mid
        if abs(skew) > slack:
            skew -= slack if skew > 0 else -slack
            off.append((f"replica {a.doc['replica']} (against this machine)", skew))
        else:
            off.append((f"replica {a.doc['replica']} (against this machine)", 0.0))
    unread = []
    for name, h in sorted(hosts.items()):
        if h.get("clock_skew_s") is None:
            unread.append(name)
        else:
            off.append((f"host {name}", float(h["clock_skew_s"])))
    bad = [(w, s) for w, s in off if abs(s) >= CLOCK_WARN_S]
    if unread:
        notes.append(f"no reading yet from {', '.join(unread)}")
    if not bad:
        worst = max((abs(s) for _, s in off), default=0.0)
        return Check("clocks", "ok", "; ".join([f"in step (largest gap {worst:.1f} s)", *notes]))
    state = "fail" if any(abs(s) >= CLOCK_FAIL_S for _, s in bad) else "warn"
    text = ", ".join(f"{w} is {abs(s):.1f} s {'ahead' if s > 0 else 'behind'}" for w, s in
                     sorted(bad, key=lambda x: -abs(x[1])))
    return Check("clocks", state, "; ".join([text + " (hosts against the control plane)", *notes]),
                 "run NTP (chrony or systemd-timesyncd) on those machines: certificates start 5 minutes "
                 "back, so a clock further off than that sees new ones as not yet valid")


def _certificates(answers: list[Answer], doc: dict[str, Any], now: float,
                  cred_not_after: float | None) -> list[Check]:
    checks = []
    ca = doc.get("ca")
    if ca:
        checks.append(_expiry("CA certificate", ca["not_after"], now, CA_FAIL_S, CA_WARN_S,
                              "the CA cannot be rotated in place yet: plan a new mesh (README, "
                              "'The certificate authority') well before it expires"))
    for a in answers:
        if a.doc is not None and a.cert_not_after is not None:
            checks.append(_expiry(f"certificate of control plane {a.doc['replica']}", a.cert_not_after, now,
                                  SERVER_FAIL_S, SERVER_WARN_S,
                                  "restart that replica: it issues itself a new certificate at start"))
    if cred_not_after is not None:
        checks.append(_expiry("your operator credential", cred_not_after, now, 0.0, CREDENTIAL_WARN_S,
                              "get a new one: `glassmesh ca issue --dir DIR/ca --operator NAME --role ROLE`"))
    leaf = (doc.get("leaf_hours") or 24.0) * 3600
    expired, late, fine, unknown = [], [], 0, []
    for h in doc.get("hosts", []):
        certs = h.get("certs") or {}
        if not certs:
            unknown.append(h["name"])
            continue
        first = min(certs.values())
        what = min(certs, key=lambda k: certs[k])
        left = first - now
        if left <= leaf * 0.1:
            expired.append(f"{h['name']} ({what} {'expired' if left <= 0 else 'expires'} {utc(first)})")
        elif left < leaf / 2 - 300:  # renewed at half life: past it (and 5 min) it is late
            late.append(f"{h['name']} ({what} expires {utc(first)}, renewal is late)")
        else:
            fine += 1
    by_hand = [f"given by hand (not checked): {', '.join(unknown)}"] if unknown else []
    fix = ("each proxy renews its certificates at half life: is it running and connected to the control plane? "
           "(its /ready, `glassmesh status`); a removed host renews nothing")
    if expired or late:
        checks.append(Check("host certificates", "fail" if expired else "warn", "; ".join(expired + late + by_hand),
                            fix))
    else:
        valid = [f"{fine} host(s) valid and renewed on time"] if fine or not by_hand else []
        checks.append(Check("host certificates", "ok", "; ".join(valid + by_hand)))
    return checks


def _snapshots(status: dict[str, Any]) -> list[Check]:
    behind, never, lagging = [], [], []
    for h in status["hosts"]:
        if not h.get("running") and h.get("last_seen_s") is None:
            never.append(h["name"])
        elif not h["in_sync"]:
            rej = h.get("last_reject") or {}
            refused = not rej.get("past") and rej.get("version", 0) >= h["latest"]
            item = (f"{h['name']} runs v{h['running'] or '-'}, latest v{h['latest']} "
                    + ("(it rejected it: see rejected snapshots)" if refused else
                       f"(behind for {h.get('behind_s') or 0:.0f} s)"))
            (behind if refused or (h.get("behind_s") or 0) >= BEHIND_FAIL_S else lagging).append(item)
    n = len(status["hosts"])
    if never or behind:
        detail = "; ".join([*(f"{x} has never reported" for x in never), *behind, *lagging])
        return [Check("snapshots", "fail", detail,
                      "a host that never reported or lags: start its proxy, or look at its log and /ready "
                      "(`control_plane.last_error`); one that rejected: see rejected snapshots")]
    if lagging:
        return [Check("snapshots", "warn", "; ".join(lagging) + " (a push is in flight)",
                      "run `glassmesh check` again in a few seconds")]
    return [Check("snapshots", "ok", f"all {n} host(s) run their latest snapshot")]


def _rejects(status: dict[str, Any]) -> Check:
    bad = []
    for h in status["hosts"]:
        rej = h.get("last_reject")
        if rej and not rej.get("past"):
            bad.append(f"{h['name']} rejected v{rej['version']}: {' '.join(str(rej['reason']).split())}")
        p = h.get("proxy") or {}
        if p.get("refused"):
            bad.append(f"{h['name']}: {p['refused']}")
        if h.get("lacks"):
            bad.append(f"{h['name']}'s proxy lacks {', '.join(h['lacks'])}, which its snapshot requires")
    if bad:
        return Check("rejected snapshots", "fail", "; ".join(bad),
                     "fix what the reason names on that host (the proxy retries by itself), upgrade its proxy, or "
                     "`glassmesh rollback VERSION`")
    return Check("rejected snapshots", "ok", "none")


def _held(status: dict[str, Any]) -> Check:
    held = status.get("held") or []
    if held:
        return Check("held changes", "fail", "; ".join(f"{h['service']}: {h['cause']}" for h in held),
                     "bring the instances back, or let the change through: `glassmesh release SERVICE` "
                     "(`glassmesh drain SERVICE` when emptying it is meant)")
    return Check("held changes", "ok", "none")


def _config(doc: dict[str, Any]) -> list[Check]:
    status = doc["status"]
    checks = []
    if status.get("compile_error"):
        checks.append(Check("config", "fail", f"the control plane cannot compile snapshots: {status['compile_error']}",
                            "see the control plane's log; `glassmesh rollback VERSION` to the last good version"))
    for w in doc.get("warnings", []):
        checks.append(Check("config", "warn", w["what"], w["fix"]))
    sick = status.get("unhealthy") or []
    if sick:
        checks.append(Check("instances", "warn", "; ".join(f"{i['service']} on {i['host']} ({i['address']}): "
                                                          f"{i['detail']}" for i in sick),
                            "start or fix those instances (their own proxy's health check says why)"))
    if not status["config_version"]:
        checks.append(Check("config", "warn", "no config applied yet: the mesh has no services",
                            "`glassmesh apply -f mesh.yaml`"))
    if not checks:
        checks.append(Check("config", "ok", f"version {status['config_version']}: no warnings"))
    return checks


def _hot_path(status: dict[str, Any]) -> Check:
    slow = [f"{h['name']} ({h['hot_path']})" for h in status["hosts"] if h.get("hot_path") not in (None, "mypyc")]
    if slow:
        return Check("hot path", "warn", f"interpreted or stale request path on {', '.join(slow)}: slower, or not "
                                         f"the code installed",
                     "reinstall glassmesh there with gcc and the Python headers (GLASSMESH_REQUIRE_COMPILED=1 makes a "
                     "failed build an error); its /ready names the modules")
    return Check("hot path", "ok", "every proxy runs the compiled request path")


def _merged(answers: list[Answer]) -> dict[str, Any] | None:
    """The first replica's answer, with each host's clock from whichever replica heard from it last."""
    docs = [a.doc for a in answers if a.doc is not None]
    if not docs:
        return None
    doc = dict(docs[0])
    hosts: dict[str, dict[str, Any]] = {}
    asks: dict[str, dict[str, Any]] = {}  # a proxy polls every replica for asks: the best answer of any
    for d in docs:
        for h in d.get("hosts", []):
            cur = hosts.get(h["name"])
            if cur is None or (h.get("clock_at") or 0) > (cur.get("clock_at") or 0):
                hosts[h["name"]] = h
            a = h.get("asks")
            if a is not None and (h["name"] not in asks or "processes" in a):
                asks[h["name"]] = a
    doc["hosts"] = [dict(hosts[n], asks=asks.get(n)) for n in sorted(hosts)]
    return doc


def _ask_channel(doc: dict[str, Any]) -> Check:
    """Each proxy answers over the ask channel, and all its serving processes serve the version it acked."""
    running = {h["name"]: h.get("running") for h in doc["status"]["hosts"]}
    silent, split, procs = [], [], 0
    for h in doc["hosts"]:
        a = h.get("asks")
        if a is None:
            silent.append(f"{h['name']} (not polling for asks)")
        elif "error" in a:
            silent.append(f"{h['name']} ({a['error']})")
        else:
            versions = sorted({p.get("snapshot_version") for p in a["processes"]}, key=lambda v: v or 0)
            procs += len(a["processes"])
            if len(versions) > 1 or (versions and running.get(h["name"]) and versions[0] != running[h["name"]]):
                split.append(f"{h['name']}'s processes serve {', '.join(f'v{v}' for v in versions)} "
                             f"(acked v{running.get(h['name'])})")
    if silent or split:
        return Check("ask channel", "warn", "; ".join(silent + split),
                     "links, explain and tap cannot see into a proxy that does not answer: is it running a release "
                     "with the ask channel, and can it reach every replica? Processes that disagree are mid-swap, "
                     "or a worker failed to take a snapshot (its log says)")
    return Check("ask channel", "ok", f"{len(doc['hosts'])} proxies answer ({procs} serving processes), each on the "
                                      f"version its host acked")


def judge(answers: list[Answer], now: float, cred_not_after: float | None = None) -> list[Check]:
    """Every verdict, in the order they are printed."""
    checks = _replicas(answers)
    doc = _merged(answers)
    if doc is None:
        return checks
    status = doc["status"]
    checks.append(_clocks(answers, {h["name"]: h for h in doc["hosts"]}, now))
    checks += _certificates(answers, doc, now, cred_not_after)
    checks += _snapshots(status)
    checks.append(_ask_channel(doc))
    checks.append(_rejects(status))
    checks.append(_held(status))
    checks += _config(doc)
    checks.append(_hot_path(status))
    return checks


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def print_checks(checks: list[Check]) -> None:
    for c in checks:
        line = Text(f"{c.state:<5} ", style=STYLE[c.state])
        line.append(f"{c.name}: {c.detail}")
        out.print(line)
        if c.fix and c.state != "ok":
            out.print(Text(f"      fix: {c.fix}", style="dim" if c.state == "warn" else ""))
    n = {s: sum(c.state == s for c in checks) for s in STYLE}
    out.print(f"{len(checks)} checks: {n['ok']} ok, {n['warn']} warn, {n['fail']} fail")


@click.command()
@output_option()
@control_option
def check(output: str, control: str) -> None:
    """A doctor: every replica, clocks, certificates, snapshots, rejects, held changes, config warnings.

    One line per check (ok, warn or fail), with a fix under each that is not
    ok. Exits 1 when a check fails (warnings alone exit 0), 5 when no
    control-plane replica can be asked: it can gate CI and deploys.
    """
    cred = operator_credential()
    answers = gather(control, cred)
    checks = judge(answers, time.time(), cred.not_after.timestamp())
    doc = {"ok": not any(c.state == "fail" for c in checks), "checks": [asdict(c) for c in checks]}
    emit(doc, output, lambda: print_checks(checks))
    if not any(a.doc is not None for a in answers):
        raise Unreachable("no control-plane replica could be asked: " + "; ".join(f"{a.url}: {a.error}"
                                                                                 for a in answers))
    if not doc["ok"]:
        raise click.exceptions.Exit(FAILED)
