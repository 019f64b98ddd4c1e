"""A WSGI app for gunicorn in the failover test: answers every request with its name (APP_NAME)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

NAME = os.environ.get("APP_NAME", "app")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"app": NAME, "path": environ.get("PATH_INFO", "")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
