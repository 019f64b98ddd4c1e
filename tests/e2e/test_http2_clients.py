"""An HTTP/2 client at an HTTP/1.1 listener is told why it cannot be served; gRPC works through a tcp link.

Real clients against a real proxy: grpcio (with and without a short deadline) and
`curl --http2-prior-knowledge` call service `greeter` through host1's outbound
listener. Each must show the mesh's message (grpcio as UNAVAILABLE's details, curl as
the body of a 505), the proxy counts them as http2_not_supported, and HTTP/1.1 on the
same listener still works. The same gRPC call through a tcp link reaches a real gRPC
server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from glassmesh.protocols.http2 import MESSAGE
from tests.e2e.harness import HttpConn, Mesh, eventually, metric, wait_port

GRPC_APP = Path(__file__).resolve().with_name("grpc_app.py")


def say_hello(target: str, timeout: float) -> bytes:
    with grpc.insecure_channel(target, options=[("grpc.default_authority", "greeter")]) as ch:
        call = ch.unary_unary("/helloworld.Greeter/SayHello")
        return call(b"mesh", timeout=timeout)  # type: ignore[no-any-return]


def test_http2_clients_are_told_why_and_grpc_goes_through_a_tcp_link(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    grpc_addr = f"{h2.ip}:{h2.app_port()}"
    wait_port(grpc_addr, mesh.spawn("app greeter@host2", [sys.executable, str(GRPC_APP), "--listen", grpc_addr]))
    h2.add_instance("greeter", grpc_addr, "tcp")
    link = h1.tcp_link("a", "greeter")
    access_log = mesh.root / "host1-access.log"
    h1.proxy_args = ["--access-log", str(access_log)]
    mesh.start()
    outbound = h1.outbound("a")

    for deadline in (3.0, 30.0):
        with pytest.raises(grpc.RpcError) as e:
            say_hello(outbound, deadline)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        assert e.value.details() == MESSAGE, e.value

    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "-i", "--http2-prior-knowledge", "-H", "Host: greeter",
                              f"http://{outbound}/helloworld.Greeter/SayHello"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out
        assert out.stdout.startswith("HTTP/2 505"), out.stdout
        assert "glassmesh-error: http2_not_supported; hop=host1/outbound" in out.stdout, out.stdout
        assert out.stdout.rstrip().endswith(MESSAGE), out.stdout

    m = h1.metrics()
    assert metric(m, "glassmesh_mesh_errors_total", side="outbound", reason="http2_not_supported") >= 3

    def logged() -> None:
        lines = [json.loads(line) for line in access_log.read_text().splitlines()]
        assert len([x for x in lines if x.get("mesh_error") == "http2_not_supported"]) >= 3, lines
        assert all((x["method"], x["status"], x["side"]) == ("PRI", 505, "outbound") for x in lines), lines

    eventually(logged)
    with HttpConn(outbound) as c:
        assert c.request("GET", "/after", {"Host": "b"}).status == 200

    # gRPC declared as a tcp service, through a tcp link: carried, without per-request features.
    assert say_hello(link, 10.0) == b"hello mesh"
