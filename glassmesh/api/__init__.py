"""Wire shapes shared by the control plane and the proxy, with no I/O and no imports from either side.

The data plane must never import glassmesh.control (it talks HTTP only), so
what both sides put on the wire lives here.
"""
