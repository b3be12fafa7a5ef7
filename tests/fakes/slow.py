"""A server that answers one byte at a time: what per-read timeouts cannot stop.

`drip(handler, in_body=False)` sends a status line and then an endless header, one
byte every `interval` seconds; `in_body=True` sends whole headers at once (with a
large Content-Length) and then drips the body. Either way the answer never ends:
the drip stops when the client hangs up or `stop` is set.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

#: Seconds between bytes: under a 1 s read timeout, so each read succeeds.
INTERVAL = 0.8
MODES = ("drip-headers", "drip-body")


def drip(
    h: BaseHTTPRequestHandler,
    *,
    in_body: bool,
    stop: threading.Event,
    interval: float = INTERVAL,
) -> None:
    h.close_connection = True
    slow: Iterator[bytes]
    if in_body:
        prompt = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n["
        )
        slow = itertools.repeat(b" ")
    else:
        prompt = b""
        status = (bytes([b]) for b in b"HTTP/1.1 200 OK\r\nX-Slow: ")
        slow = itertools.chain(status, itertools.repeat(b"a"))
    with contextlib.suppress(OSError):
        h.wfile.write(prompt)
        for byte in slow:
            h.wfile.write(byte)
            h.wfile.flush()
            if stop.wait(interval):
                return
