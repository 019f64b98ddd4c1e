"""--tls-keylog writes the session secrets Wireshark/tshark need to decrypt proxy-to-proxy captures."""

from __future__ import annotations

from tests.e2e.harness import HttpConn, Mesh, eventually


def test_keylog_has_tls13_secrets_for_the_link(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    out_log, in_log = mesh.root / "host1.keys", mesh.root / "host2.keys"
    h1.proxy_args = ["--tls-keylog", str(out_log)]
    h2.proxy_args = ["--tls-keylog", str(in_log)]
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        assert c.request("GET", "http://b/", {"Host": "b"}).status == 200

    def secrets_written() -> None:
        for log in (out_log, in_log):
            kinds = {line.split()[0] for line in log.read_text().splitlines() if line.strip()}
            assert {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= kinds, (log, kinds)

    eventually(secrets_written)
    # Both ends logged the same session: the client random of the handshake appears in both files.
    randoms_out = {line.split()[1] for line in out_log.read_text().splitlines() if line.strip()}
    randoms_in = {line.split()[1] for line in in_log.read_text().splitlines() if line.strip()}
    assert randoms_out & randoms_in
