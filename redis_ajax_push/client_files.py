"""
The browser files that raps serves: the client module C{/static/raps.js}
and the demo page C{/demo}, read from the package's C{static} folder.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

CLIENT_CONTENT_TYPE = b"text/javascript; charset=utf-8"
# Browsers may reuse the client for 5 minutes, so a new raps version reaches
# open pages soon after an upgrade.
CLIENT_CACHE_CONTROL = b"public, max-age=300"

DEMO_CONTENT_TYPE = b"text/html; charset=utf-8"
DEMO_CACHE_CONTROL = b"no-cache"

_INLINE_SCRIPT = re.compile(rb'<script type="module">(.*?)</script>', re.DOTALL)


@dataclass(frozen=True)
class StaticFile:
    """
    A file to serve: its bytes and the response headers that go with it.
    """

    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]


def read_static(name: str) -> bytes:
    """
    Read a file of the package's C{static} folder.

    @raise FileNotFoundError: when the installed package lacks it.
    """
    return (resources.files("redis_ajax_push") / "static" / name).read_bytes()


def client_file() -> StaticFile:
    """
    Load the client module C{raps.js}.
    """
    return StaticFile(
        read_static("raps.js"),
        (
            (b"Content-Type", CLIENT_CONTENT_TYPE),
            (b"Cache-Control", CLIENT_CACHE_CONTROL),
            (b"X-Content-Type-Options", b"nosniff"),
        ),
    )


def demo_file() -> StaticFile:
    """
    Load the demo page C{demo.html}, with a Content-Security-Policy that
    lets it load nothing but this daemon's URLs and its own inline module.
    """
    body = read_static("demo.html")
    return StaticFile(
        body,
        (
            (b"Content-Type", DEMO_CONTENT_TYPE),
            (b"Cache-Control", DEMO_CACHE_CONTROL),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Content-Security-Policy", demo_content_security_policy(body)),
        ),
    )


def demo_content_security_policy(page: bytes) -> bytes:
    """
    Build the policy of the demo page. It allows scripts from this origin,
    the page's inline module by its SHA-256 hash, requests to this origin
    and inline styles, and it blocks everything else.

    @raise ValueError: when the page has no inline module script.
    """
    match = _INLINE_SCRIPT.search(page)
    if match is None:
        raise ValueError('demo.html has no <script type="module"> element')
    digest = base64.b64encode(hashlib.sha256(match.group(1)).digest())
    return b"; ".join(
        [
            b"default-src 'none'",
            b"script-src 'self' 'sha256-" + digest + b"'",
            b"style-src 'unsafe-inline'",
            b"connect-src 'self'",
            b"img-src data:",
            b"base-uri 'none'",
            b"form-action 'none'",
            b"frame-ancestors 'none'",
        ]
    )
