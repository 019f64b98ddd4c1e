"""The dashboard in a real headless browser, against the running demo: Debian's chromium driven by Selenium.

`glassmesh demo` runs (its control plane, four proxies, the apps, traffic);
`glassmesh dashboard --no-open` prints the login link, as a user would run
it; chromium (/usr/bin/chromium through /usr/bin/chromedriver, never a
downloaded browser) opens it. The page must load with no console error,
show the demo's services and links with non-zero rates, follow a link to its
page and see a tapped request there. Screenshots of both pages are saved in
the test's own tmp_path (`dashboard.png`, `dashboard-link.png`; pytest keeps
the last runs under /tmp/pytest-of-$USER/).

The browser trusts the control plane's certificate by its public key only
(`--ignore-certificate-errors-spki-list`), the key the test read from the
control plane after checking it against the mesh CA, as the user compares
the fingerprint `glassmesh dashboard` prints.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.test_demo import DEMO_ADDRESSES, _bindable

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                                reason="Debian's chromium and chromium-driver are not installed (make test installs "
                                       "them: scripts/install-test-deps.sh)")


def _spki_sha256(port: int, ca: Path) -> str:
    """base64 SHA-256 of the public key the control plane serves, once its certificate checks against the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Demo:
    """`glassmesh demo` in the background, its output kept, stopped with SIGTERM at the end."""

    def __init__(self, tmp: Path) -> None:
        deadline = time.monotonic() + 120  # another test's demo may still hold the fixed addresses
        while busy := [f"{ip}:{port}" for ip, port in DEMO_ADDRESSES if not _bindable(ip, port)]:
            if time.monotonic() > deadline:
                pytest.fail(f"the demo's addresses stay taken: {busy}")
            time.sleep(1)
        self.state = tmp / "state"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GLASSMESH_")}
        self.env.update(PYTHONUNBUFFERED="1", COLUMNS="250", XDG_CONFIG_HOME=str(tmp / "config"))
        self.log = tmp / "demo.out"
        self.out = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*CLI, "demo", "--duration", "120", "--state-dir", str(self.state)],
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True, env=self.env)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"the demo exited ({self.proc.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"the demo never printed {needle!r}:\n{self.text()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


@pytest.fixture
def demo(tmp_path: Path, demo_addresses: None) -> Iterator[Demo]:
    d = Demo(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def browser(tmp_path: Path, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser or a driver
    demo.wait_for("control plane up on https://127.0.0.1:4200")
    spki = _spki_sha256(4200, demo.state / "control" / "ca" / "ca.pem")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}",
                f"--ignore-certificate-errors-spki-list={spki}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-component-update"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER,
                                                            log_output=str(tmp_path / "chromedriver.log")))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, pred, timeout: float = 30.0, driver=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            page = driver.find_element("tag name", "body").text if driver is not None else ""
            raise AssertionError(f"timed out waiting for {what}; the page shows:\n{page}")
        time.sleep(0.3)


def _texts(driver, selector: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The text of every element `selector` finds, read in one go (the page redraws its sections live, so an
    element found in one call may be gone by the next)."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText ?? e.textContent)", selector))


def _click(driver, selector: str) -> None:  # type: ignore[no-untyped-def]
    """Click what `selector` finds, as a user does, again if a redraw replaced it in between."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(10):
        try:
            driver.find_element("css selector", selector).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{selector} kept being redrawn under the click")


def _rate(text: str) -> float:
    m = re.search(r"([\d.]+)/s", text)
    return float(m.group(1)) if m else 0.0


def test_dashboard_shows_the_running_demo(demo: Demo, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver = browser
    demo.wait_for("traffic: ")
    # The demo tells the user how to open it, with the command to run: a few lines after "traffic: ", once
    # it has started its canary thread (asserting it at once lost that race on a busy machine).
    demo.wait_for("see it in your browser (service graph, link matrix, live tap): glassmesh dashboard", timeout=30)
    r = subprocess.run([*CLI, "dashboard", "--no-open"], env=demo.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    url = re.search(r"dashboard: (https://127\.0\.0\.1:4200/dashboard/login\?token=\S+)", r.stdout)
    assert url, r.stdout

    driver.get(url.group(1))
    _wait("the page after the login", lambda: driver.current_url.endswith("/dashboard/#/"), driver=driver)
    # The session's key came in the fragment: the page keeps it in its own storage, not in the address bar.
    assert driver.execute_script("return localStorage.getItem('glassmesh_session_key')")

    # The demo's services in the graph, its links in the matrix with non-zero rates.
    for svc in ("a", "b", "c"):
        _wait(f"service {svc} in the graph", lambda s=svc: _texts(driver, f'#graph [data-service="{s}"]'),
              driver=driver)
    for link in ("a->b", "a->c"):
        _wait(f"{link} with a non-zero rate in the matrix and the graph", lambda lk=link: any(
            _rate(t) > 0 for t in _texts(driver, f'#matrix a[data-link="{lk}"]')) and any(
            _rate(t) > 0 for t in _texts(driver, f'#graph a[data-link="{lk}"]')), driver=driver)
    assert "host1" in driver.find_element(By.ID, "hosts").text
    assert "no held changes" in driver.find_element(By.ID, "held").text
    driver.save_screenshot(str(tmp_path / "dashboard.png"))

    # Follow a link to its page: its figures, and a request tapped live as it crosses the proxies.
    _click(driver, '#matrix a[data-link="a->b"]')
    _wait("the link's page", lambda: driver.current_url.endswith("#/link/a/b"), driver=driver)
    assert driver.find_element(By.ID, "link-title").text == "a → b"
    rows = _wait("a tapped request", lambda: _texts(driver, "#tap tr.tap-row"), 40, driver=driver)
    assert any("GET" in r and re.search(r"\b200\b", r) for r in rows), rows
    _wait("latency over time", lambda: _texts(driver, "#latency polyline"), driver=driver)  # [""] per line

    # A failed request on the link shows among the recent errors, with the hop that made it: here B's app
    # (it answers /status/503 so), not a proxy. Sent as A, through host1's proxy, as the README's curl does.
    conn = http.client.HTTPConnection("127.0.0.11", 4140, timeout=10)
    try:
        conn.request("GET", "/status/503", headers={"host": "b"})
        assert conn.getresponse().status == 503
    finally:
        conn.close()
    failed = _wait("the 503 among the recent errors", lambda: [
        t for t in _texts(driver, "#link-errors tr.error-row") if "/status/503" in t], 30, driver=driver)
    assert "503" in failed[0] and "the app (no mesh error)" in failed[0], failed
    driver.save_screenshot(str(tmp_path / "dashboard-link.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 0

    # No console error, from the first page to the last (a failed fetch shows as one too).
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    # Log out; the link again, in the same browser, is refused, saying how to get another; and the page
    # without its session gets no data, and says how to log in.
    def says_how_to_log_in() -> bool:
        return "run `glassmesh dashboard` for a login link" in driver.find_element(By.ID, "banner").text

    _click(driver, "#logout")
    _wait("the page to say the session ended", says_how_to_log_in, driver=driver)
    driver.get(url.group(1))
    assert "This login link cannot be used" in driver.find_element(By.TAG_NAME, "body").text
    driver.get(url.group(1).split("/dashboard/")[0] + "/dashboard/")
    _wait("the page to say it has no session", says_how_to_log_in, driver=driver)
    assert not _texts(driver, "#matrix a"), "data shown without a session"
