"""A load generator for the REST endpoint, run as its own process.

``python -m benchmarks.load --url URL --bodies FILE --clients N --seconds S``
opens ``N`` keep-alive HTTP/1.1 connections; each sends the request bodies
of ``FILE`` (one JSON body per line, taken in turn) one after the other for
``S`` seconds, after ``--warmup`` seconds that are not counted. Prints one
JSON object: requests, errors (a status other than 200, a timeout or a
broken connection), p50 / p99 latency in ms and requests per second. With
``--record FILE`` every counted answer is written as a JSON line
``{"body": <line number>, "status": ..., "answer": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.parse
from typing import Optional, Sequence

import numpy as np


class _Client:
    """One connection sending requests in turn."""

    def __init__(self, host: str, port: int, requests: list[bytes], offset: int,
                 timeout: float) -> None:
        self.host, self.port, self.requests = host, port, requests
        self.next, self.timeout = offset, timeout
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self._close()
        return status, body

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def run(self, start: float, stop: float, out: list, record: bool) -> None:
        """Sends until ``stop``; appends (index, latency s, status, body) after ``start``."""
        while time.perf_counter() < stop:
            index = self.next % len(self.requests)
            self.next += 1
            began = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(self._exchange(self.requests[index]),
                                                      self.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                status, body = 0, b""
                self._close()
            if began >= start:
                out.append((index, time.perf_counter() - began, status,
                            body if record else b""))
        self._close()


def requests_for(url: str, bodies: Sequence[bytes]) -> tuple[str, int, list[bytes]]:
    """(host, port, raw HTTP/1.1 POST requests) for ``url``."""
    parts = urllib.parse.urlsplit(url)
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n")
    return parts.hostname, parts.port or 80, [head.format(len(b)).encode() + b for b in bodies]


async def run_load(url: str, bodies: Sequence[bytes], clients: int, seconds: float,
                   warmup: float, record: bool = False, timeout: float = 10.0) -> list:
    """Runs the load; returns the counted (body index, latency s, status, body) tuples."""
    host, port, requests = requests_for(url, bodies)
    start = time.perf_counter() + warmup
    out: list = []
    pool = [_Client(host, port, requests, i * 7919, timeout) for i in range(clients)]
    await asyncio.gather(*(c.run(start, start + seconds, out, record) for c in pool))
    return out


def summary(results: list, seconds: float) -> dict[str, float]:
    """Requests, errors, p50 / p99 latency (ms) and requests per second."""
    ms = np.array([r[1] for r in results]) * 1000 if results else np.zeros(1)
    return {"requests": len(results), "errors": sum(1 for r in results if r[2] != 200),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "requests_per_s": round(len(results) / seconds, 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the load and prints the summary as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="file: one JSON body per line")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--record", help="write every counted answer here (JSON lines)")
    args = parser.parse_args(argv)
    with open(args.bodies, "rb") as f:
        bodies = [line.strip() for line in f if line.strip()]
    results = asyncio.run(run_load(args.url, bodies, args.clients, args.seconds, args.warmup,
                                   bool(args.record), args.timeout))
    if args.record:
        with open(args.record, "w") as f:
            for index, _, status, body in results:
                f.write(json.dumps({"body": index, "status": status,
                                    "answer": json.loads(body) if body else None}) + "\n")
    print(json.dumps(summary(results, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
