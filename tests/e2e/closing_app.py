"""A test app that closes connections without answering, as an app that is restarting or going away does.

    python tests/e2e/closing_app.py --listen 127.77.1.2:18080 --name b@host2 --mode second|never

second: answers the first request of each connection (kept alive), and closes the
        connection when the next request arrives on it, without answering (an app that
        closed its kept-alive connections just as a proxy reused one).
never:  reads each request and closes the connection without answering (an app on its
        way out that still accepts connections).

Every request it reads is printed, so a test's failure log shows what reached it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, mode: str) -> None:
    n = 0
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            n += 1
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            print(f"[{name}] request {n} on this connection: {line}", flush=True)
            if mode == "never" or n > 1:  # at the head: a body still to come is never read
                print(f"[{name}] closing without an answer", flush=True)
                return
            length = 0
            for h in head.split(b"\r\n")[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if length:
                await reader.readexactly(length)
            body = json.dumps({"app": name, "request": line}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), b"" if line.startswith("HEAD ") else body))
            await writer.drain()
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--mode", choices=("second", "never"), required=True)
    a = ap.parse_args()
    host, _, port = a.listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: serve(r, w, a.name, a.mode), host, int(port))
    stop = asyncio.Event()  # SIGTERM ends it with status 0, as the harness expects of every process
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
