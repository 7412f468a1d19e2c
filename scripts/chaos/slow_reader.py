"""Slow reader: one client reads its stream one byte a second while the others stream at full speed.

The fast clients' inter-token gaps are measured in two halves of the same run: first without the slow reader (the
baseline), then with it. Bars: their p99 with the slow reader is within 10% of the baseline's; the router's RSS does
not grow while the slow reader falls behind (within 5%); the slow reader's stream is still open at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

from .client import completion_body, request, session
from .report import Options, Result, percentile
from .server import context_length, rss_mb

FULL_DURATION_S = 120.0
FAST = 63
MAX_TOKENS = 64
ITL_BAR = 1.10
RSS_GROWTH = 0.05


async def run(start, opt: Options) -> Result:
    half = opt.seconds(FULL_DURATION_S) / 2
    fast = opt.count(FAST)
    server = start(*opt.serve_args())
    async with session() as http:
        await _fast_clients(http, server, fast, 2.0)  # warm-up, not measured
        baseline = await _fast_clients(http, server, fast, half)
        longest = min(4000, await context_length(http, server.url) - 64)
        reader = await SlowReader.open(server.url, completion_body(server.model, longest, stream=True))
        rss_start = rss_mb(server.process.pid)
        reading = asyncio.create_task(reader.read_slowly(half))
        with_slow = await _fast_clients(http, server, fast, half)
        rss_end = rss_mb(server.process.pid)
        still_open = await reading
        reader.close()

    p99_base, p99_slow = percentile(baseline, 99), percentile(with_slow, 99)
    result = Result("slow-reader", {
        "fast_clients": fast, "half_s": half, "itl_p50_ms": f"{1000 * percentile(baseline, 50):.1f}->"
                                                           f"{1000 * percentile(with_slow, 50):.1f}",
        "itl_p99_ms": f"{1000 * p99_base:.1f}->{1000 * p99_slow:.1f}", "p99_ratio": p99_slow / p99_base,
        "slow_bytes_read": reader.bytes_read, "router_rss_mb": f"{rss_start:.1f}->{rss_end:.1f}",
    })
    result.check(f"fast clients' ITL p99 within {100 * (ITL_BAR - 1):g}% of baseline", p99_slow <= p99_base * ITL_BAR,
                 timing=True)
    result.check(f"router RSS within {100 * RSS_GROWTH:g}% while the slow reader lags",
                 rss_end <= rss_start * (1 + RSS_GROWTH))
    result.check("the slow reader was served (and not cut off)", still_open and reader.bytes_read > 0)
    return result


async def _fast_clients(http, server, clients: int, seconds: float) -> list[float]:
    """Closed-loop streams for `seconds`; every per-token gap they saw."""
    stop_at = time.monotonic() + seconds
    gaps: list[float] = []

    async def client() -> None:
        while time.monotonic() < stop_at:
            o = await request(http, server.url, "/v1/completions",
                              completion_body(server.model, MAX_TOKENS, stream=True), 60)
            if not o.ok:
                raise RuntimeError(f"a fast client failed: {o}")
            gaps.extend(o.gaps)

    await asyncio.gather(*(client() for _ in range(clients)))
    return gaps


class SlowReader:
    """A raw HTTP/1.1 stream with a 4 KiB receive buffer, read one byte a second (asyncio buffers 2 bytes at most)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.bytes_read = 0

    @classmethod
    async def open(cls, url: str, body: dict) -> SlowReader:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port)), 10)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1)
        payload = json.dumps(body).encode()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (parts.netloc.encode(), len(payload), payload))
        await writer.drain()
        return cls(reader, writer)

    async def read_slowly(self, seconds: float) -> bool:
        """One byte a second for `seconds`; False if the server closed the stream."""
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            byte = await asyncio.wait_for(self.reader.read(1), 30)
            if not byte:
                return False
            self.bytes_read += 1
            await asyncio.sleep(1.0)
        return True

    def close(self) -> None:
        self.writer.close()
