"""
Server-Sent Events framing for the stream mode.
"""

from __future__ import annotations

CONTENT_TYPE = b"text/event-stream; charset=utf-8"
HEARTBEAT = b": heartbeat\n\n"


def sse_event(name: str, data: bytes) -> bytes:
    """
    Frame C{data} as one event called C{name}.

    SSE ends a field at any line break, so each line of C{data} gets its own
    C{data:} field; the browser joins them with C{\\n}, which JSON parsers
    read as whitespace.
    """
    fields = [b"event: " + name.encode("ascii") + b"\n"]
    fields.extend(b"data: " + line + b"\n" for line in data.splitlines() or [b""])
    fields.append(b"\n")
    return b"".join(fields)


def sse_retry(milliseconds: int) -> bytes:
    """
    Frame the reconnection delay hint for EventSource.
    """
    return b"retry: %d\n\n" % milliseconds
