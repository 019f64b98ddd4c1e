"""The access log writes whole JSON lines in batches: soon after the response, never cut."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from glassmesh.proxy import runtime
from glassmesh.proxy.runtime import AccessLog


def test_lines_reach_the_file_within_the_flush_interval_and_at_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def body() -> None:
        log = AccessLog(str(path))
        for i in range(3):
            log.add(json.dumps({"n": i}).encode() + b"\n")
        assert path.read_bytes() == b""  # batched, not one write per line
        await asyncio.sleep(runtime.ACCESS_FLUSH_S * 3)
        assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [0, 1, 2]
        log.add(b'{"n": 3}\n')
        log.flush()  # what a stopping proxy does
        assert path.read_text().splitlines()[-1] == '{"n": 3}'

    asyncio.run(body())


def test_a_full_batch_is_written_at_once_and_appends_to_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b'{"old": true}\n')

    async def body() -> None:
        log = AccessLog(str(path))
        line = json.dumps({"pad": "x" * 1000}).encode() + b"\n"
        n = runtime.ACCESS_FLUSH_BYTES // len(line) + 1
        for _ in range(n):
            log.add(line)
        lines = path.read_bytes().splitlines(keepends=True)
        assert lines[0] == b'{"old": true}\n' and lines[1:] == [line] * n

    asyncio.run(body())
