"""A small HTTP/1.x server on asyncio, with limits that refuse early.

One protocol object per connection; requests on a connection are answered in
order. Keep-alive follows the protocol version: HTTP/1.1 keeps the
connection unless the client sends ``Connection: close``; HTTP/1.0 closes it
unless the client sends ``Connection: keep-alive``, and then the response
says ``Connection: keep-alive``. Limits, each answered with a JSON
``{"error": ...}`` body and the connection closed:

* a ``Content-Length`` over ``max_body_bytes``: 413 as soon as the headers
  are in, the body is never read (the connection lingers briefly, discarding
  what the client still sends, so it reads the 413 rather than a reset);
* headers over ``max_header_bytes``: 431; a malformed request line, header
  or ``Content-Length``: 400; a body without ``Content-Length`` (chunked): 411;
* a request not complete ``read_timeout`` seconds after its first byte
  (slow or trickling headers or body): 408.

Idle keep-alive connections are closed after ``idle_timeout`` seconds. An
``Expect: 100-continue`` request gets ``100 Continue`` once its length is
accepted. A handler exception is a 500; nothing a client sends stops the
server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Awaitable, Callable, Optional

from serving.codec import error_body

REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}
LINGER_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-request limits (see the module docstring)."""

    max_body_bytes: int = 4 << 20
    max_header_bytes: int = 64 << 10
    read_timeout: float = 10.0
    idle_timeout: float = 75.0


@dataclasses.dataclass
class Request:
    """A parsed request: method, target path, version, lower-cased headers, body."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes = b""


Handler = Callable[[Request], Awaitable[tuple[int, bytes]]]


class HttpError(Exception):
    """A request refused by the protocol layer; the connection is closed after it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_head(head: bytes) -> Request:
    """Request line and headers (without the blank line)."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ")
    except ValueError as e:
        raise HttpError(400, "malformed request line") from e
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(400, f"unsupported protocol version {version[:16]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:40]!r}")
        headers[name.lower()] = value.strip()
    return Request(method, path, version, headers)


def _content_length(request: Request, limits: Limits) -> int:
    if "transfer-encoding" in request.headers:
        raise HttpError(411, "chunked bodies are not accepted; send a Content-Length")
    raw = request.headers.get("content-length", "0")
    if not raw.isdigit():
        raise HttpError(400, f"invalid Content-Length {raw[:20]!r}")
    length = int(raw)
    if length > limits.max_body_bytes:
        raise HttpError(413, f"request body of {length} bytes is over the limit of "
                             f"{limits.max_body_bytes} bytes")
    return length


def keep_alive(request: Request) -> bool:
    """Whether the connection stays open after answering ``request``."""
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


def response(code: int, body: bytes, keep: bool, version: str) -> bytes:
    """Status line, headers and body."""
    connection = ("keep-alive" if version == "HTTP/1.0" else None) if keep else "close"
    head = [f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if connection:
        head.append(f"Connection: {connection}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class HttpProtocol(asyncio.Protocol):
    """One connection: reads requests, awaits the handler, writes responses."""

    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler, self.limits = handler, limits
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.request: Optional[Request] = None
        self.length = 0
        self.busy = self.closing = False
        self.timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]
        self._arm(self.limits.idle_timeout, None)

    def connection_lost(self, exc: Optional[Exception]) -> None:  # noqa: D102
        self.closing = True
        self._disarm()

    def _arm(self, seconds: float, error: Optional[HttpError]) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire, error)

    def _disarm(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def _expire(self, error: Optional[HttpError]) -> None:
        self.timer = None
        if error is None or self.busy:
            self.transport.close()
        else:
            self._refuse(error)

    def _refuse(self, error: HttpError) -> None:
        """Answers a protocol error, stops reading requests and lingers before closing."""
        self.closing = True
        self.transport.write(response(error.code, error_body(str(error)), False, "HTTP/1.1"))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_SECONDS, None)

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self.closing:
            return
        if not self.buffer and self.request is None and not self.busy:
            self._arm(self.limits.read_timeout, HttpError(
                408, f"request not received within {self.limits.read_timeout} s"))
        self.buffer += data
        try:
            self._advance()
        except HttpError as e:
            self._refuse(e)

    def _advance(self) -> None:
        if self.busy:
            self.transport.pause_reading()
            return
        if self.request is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > self.limits.max_header_bytes:
                    raise HttpError(431, f"headers over {self.limits.max_header_bytes} bytes")
                return
            if end > self.limits.max_header_bytes:
                raise HttpError(431, f"headers over {self.limits.max_header_bytes} bytes")
            self.request = parse_head(bytes(self.buffer[:end]))
            del self.buffer[:end + 4]
            self.length = _content_length(self.request, self.limits)
            if self.request.headers.get("expect", "").lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(self.buffer) < self.length:
            return
        request, self.request = self.request, None
        request.body = bytes(self.buffer[:self.length])
        del self.buffer[:self.length]
        self._disarm()
        self.busy = True
        asyncio.ensure_future(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            code, body = await self.handler(request)
        except Exception as e:  # noqa: BLE001  a handler bug is a 500, never a dead server
            logging.exception("handler failed on %s %s", request.method, request.path)
            code, body = 500, error_body(f"internal error: {type(e).__name__}: {e}")
        if self.closing:
            return
        keep = keep_alive(request)
        self.transport.write(response(code, body, keep, request.version))
        self.busy = False
        if not keep:
            self.closing = True
            self.transport.close()
            return
        self.transport.resume_reading()
        if self.buffer:
            self._arm(self.limits.read_timeout, HttpError(
                408, f"request not received within {self.limits.read_timeout} s"))
            try:
                self._advance()
            except HttpError as e:
                self._refuse(e)
        else:
            self._arm(self.limits.idle_timeout, None)


async def serve(handler: Handler, host: str, port: int, limits: Limits, backlog: int = 4096
                ) -> asyncio.AbstractServer:
    """Starts listening; the kernel caps ``backlog`` at ``net.core.somaxconn``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpProtocol(handler, limits), host, port,
                                    backlog=backlog, reuse_address=True)
