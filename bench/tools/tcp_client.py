#!/usr/bin/env python3
"""TCP bulk client: connect, read to EOF (bounded by a deadline), print one JSON line.

Adapted from shared/peer-bench/tcp_client.py; adds the deadline so a stuck proxy cannot hang the run.
usage: tcp_client.py PORT EXPECTED_BYTES TIMEOUT_S
"""
import json
import socket
import sys
import time

port, expect, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
mv = memoryview(bytearray(1 << 20))
t0 = time.perf_counter()
s = socket.create_connection(("127.0.0.1", port), timeout=5)
n = 0
err = ""
try:
    while True:
        left = t0 + limit - time.perf_counter()
        if left <= 0:
            err = "deadline"
            break
        s.settimeout(left)
        k = s.recv_into(mv)
        if not k:
            break
        n += k
except OSError as e:
    err = str(e) or type(e).__name__
dt = time.perf_counter() - t0
s.close()
print(json.dumps({"bytes": n, "secs": round(dt, 4), "gbit_s": round(n * 8 / dt / 1e9, 3),
                  "ok": n == expect and not err, "error": err}))
