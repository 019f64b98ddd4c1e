"""`glassmesh` with a tap in each proxy process, for the features section of `make bench`.

    python bench/tapped.py on|off proxy --config ...

A bench pair has no control plane to ask for a tap, so this starts one in
each serving process the way an ask would (proxy/tap.py: start, then a
drain every POLL_S that encodes what it took, as the ask's handler does
before posting it):

- on: a tap matching every exchange with --headers and --body 1024 (each
  exchange's bytes recorded; RATE events a second kept, the rest counted);
- off: a tap started and stopped at once: the process as a tap leaves it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import msgspec

from glassmesh.api.tap import TapArgs
from glassmesh.proxy import runtime, tap

MODE = sys.argv.pop(1)
if MODE not in ("on", "off"):
    raise SystemExit("usage: tapped.py on|off proxy ...")
_sweeper = runtime.Runtime.sweeper


async def _drain(rt: Any) -> None:
    while True:
        await asyncio.sleep(tap.POLL_S)
        msgspec.json.encode(rt.taps["bench"].drain())


async def _sweeper_with_tap(self: Any) -> None:
    tap.start(self, "bench", TapArgs.parse({"headers": "1", "body": "1024"}))
    if MODE == "off":
        tap.stop(self, "bench")
        # Nothing of the tap is left: no observer (the trace ring is told apart, natively), as in a proxy never tapped.
        assert not self.observers and not self.recording
    else:
        self.spawn(_drain(self))
    await _sweeper(self)


runtime.Runtime.sweeper = _sweeper_with_tap  # type: ignore[method-assign]

from glassmesh.cli.main import main  # noqa: E402

main()
