#!/usr/bin/env python3
"""TCP bulk upstream: on each connection send N bytes, half-close, wait for the peer to close.

Copied from shared/peer-bench/tcp_source.py (the send loop is the same).
usage: tcp_source.py PORT NBYTES
"""
import socket
import socketserver
import sys

N = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 30
BUF = memoryview(bytes(4 << 20))


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        left = N
        try:
            while left > 0:
                k = min(left, len(BUF))
                s.sendall(BUF[:k])
                left -= k
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            while s.recv(65536):
                pass
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
