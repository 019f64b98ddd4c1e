"""The traffic-policy stages of the request path, as pure logic: no asyncio, no sockets.

Each file holds one stage; the proxy strings them per side (glassmesh/proxy/chain.py).
Outbound order: route (route.py) -> split (split.py) -> fault (fault.py) -> overload
(overload.py) -> retry with budget (retry.py) -> balance (balance.py) over endpoints
(endpoint.py) that outlier detection (eject.py) may eject; mirror (mirror.py) copies
a share of a route's requests. compile_policy (route.py) builds them from a snapshot.
"""
