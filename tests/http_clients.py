"""
HTTP clients for tests: watches in flight through treq, and a raw HTTP/1.1
client for tests that must control every byte sent or the moment a
connection closes. The raw client is blocking socket code that runs in the
reactor's thread pool, so that the in-process daemon keeps running.
"""

from __future__ import annotations

import json
import socket
from typing import Any, BinaryIO

import treq
from twisted.internet import defer, threads


class PendingRequest:
    """
    An HTTP request in flight: C{done} is true once its response has
    arrived, and awaiting it returns the response.
    """

    def __init__(self, deferred: defer.Deferred[Any]) -> None:
        self.done = False
        self._deferred = deferred.addBoth(self._mark_done)

    def _mark_done(self, result: Any) -> Any:
        self.done = True
        return result

    def __await__(self) -> Any:
        return self._deferred.__await__()


def start_watch(base_url: str, task_id: str) -> PendingRequest:
    """
    Start a watch of C{task_id} on a new connection.
    """
    return PendingRequest(
        treq.get(f"{base_url}/task/{task_id}?watch", persistent=False)
    )


async def response_json(response: Any) -> Any:
    """
    Read a treq response's body and decode it as JSON.
    """
    return json.loads(await response.content())


class RawResponse:
    """
    One HTTP response as read from the socket: status, headers in order and
    the body, with chunked transfer coding removed.
    """

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes]:
        """
        Return the values of the header C{name}, matched without case.
        """
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def json(self) -> Any:
        """
        Decode the body as JSON; leading heartbeat newlines are whitespace.
        """
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RawResponse {self.status} {self.headers!r} {self.body[:300]!r}>"


def read_response(stream: BinaryIO, method: bytes = b"GET") -> RawResponse | None:
    """
    Read one response from C{stream}, or return C{None} when the server
    closed the connection before a status line.

    A response to C{HEAD} has no body, whatever its headers state.
    """
    status_line = stream.readline()
    if not status_line:
        return None
    status = int(status_line.split(b" ", 2)[1])
    headers = []
    while True:
        line = stream.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.rstrip(b"\r\n").partition(b":")
        headers.append((name.strip(), value.strip()))
    response = RawResponse(status, headers, b"")
    if method == b"HEAD" or status in (204, 304):
        return response

    coding = b",".join(response.header(b"Transfer-Encoding")).lower()
    if b"chunked" in coding:
        response.body = _read_chunked(stream)
    elif response.header(b"Content-Length"):
        response.body = stream.read(int(response.header(b"Content-Length")[0]))
    else:
        response.body = stream.read()
    return response


def _read_chunked(stream: BinaryIO) -> bytes:
    chunks = []
    while True:
        size_line = stream.readline()
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            # The trailer section is empty: one CRLF ends the body.
            stream.readline()
            return b"".join(chunks)
        chunks.append(stream.read(size))
        stream.readline()


def exchange(
    port: int,
    request: bytes,
    methods: tuple[bytes, ...] = (b"GET",),
    timeout: float = 5.0,
) -> list[RawResponse]:
    """
    Send C{request} to 127.0.0.1:C{port} in one C{sendall}, then read one
    response per entry of C{methods}, the method of each request sent.

    Blocks, so run it with L{send_raw}. The list is shorter than
    C{methods} when the server closed the connection first, including with
    a reset.

    @raise TimeoutError: when the server sends nothing for C{timeout} s.
    """
    responses: list[RawResponse] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        try:
            client.sendall(request)
            with client.makefile("rb") as stream:
                for method in methods:
                    response = read_response(stream, method)
                    if response is None:
                        break
                    responses.append(response)
        except ConnectionResetError:
            pass
    return responses


async def send_raw(
    port: int,
    request: bytes,
    methods: tuple[bytes, ...] = (b"GET",),
    timeout: float = 5.0,
) -> list[RawResponse]:
    """
    Run L{exchange} in the reactor's thread pool and return its responses.
    """
    responses: list[RawResponse] = await threads.deferToThread(
        exchange, port, request, methods, timeout
    )
    return responses


def get_request(target: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    """
    Build a request for C{target} that requests that the server close the
    connection after its response.
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines.extend(headers)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"
