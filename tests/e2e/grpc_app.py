"""A real gRPC server for the tests: helloworld.Greeter/SayHello answers b"hello " + the request bytes.

    python tests/e2e/grpc_app.py --listen 127.77.1.2:18080

No generated code: raw bytes in and out through a generic handler.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc


def say_hello(request: bytes, context: Any) -> bytes:
    return b"hello " + request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    a = ap.parse_args()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter", {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(a.listen)
    server.start()
    print(f"grpc server on {a.listen}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())  # a clean stop: exit 0, as the harness expects
    stopped.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
