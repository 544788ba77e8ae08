"""
Redis server addresses given as URLs: C{redis://[[user]:password@]host[:port][/db]}
and C{unix://[[user]:password@]/path/to/socket[?db=N]}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit


class RedisURLError(ValueError):
    """
    A Redis URL cannot be used. The message names the part that is wrong.
    """


@dataclass(frozen=True)
class RedisURL:
    """
    The address and credentials of a Redis server.
    """

    host: str | None = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        # Credentials are left out: this text goes into logs.
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def _parse_db(text: str) -> int:
    # isdigit() alone accepts digits of other scripts, such as "٣".
    if not (text.isascii() and text.isdigit()):
        raise RedisURLError(f"database number {text!r} is not a non-negative integer")
    return int(text)


def parse_redis_url(text: str) -> RedisURL:
    """
    Parse a C{redis://} or C{unix://} URL.

    @raise RedisURLError: for another scheme, a missing host or path, a bad
        port or a bad database number.
    """
    parts = urlsplit(text)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None

    if parts.scheme == "unix":
        if not parts.path:
            raise RedisURLError(
                f"{text!r} has no socket path, as in unix:///run/redis.sock"
            )
        db_values = parse_qs(parts.query).get("db", ["0"])
        return RedisURL(
            host=None,
            path=parts.path,
            db=_parse_db(db_values[-1]),
            username=username,
            password=password,
        )

    if parts.scheme != "redis":
        raise RedisURLError(
            f"{text!r} has an unsupported scheme; use redis://host:port/db "
            "or unix:///path/to/socket"
        )
    if not parts.hostname:
        raise RedisURLError(f"{text!r} has no host, as in redis://127.0.0.1:6379/0")
    if parts.query:
        raise RedisURLError(
            f"{text!r} has a query string; put the database number in the path, "
            "as in redis://127.0.0.1:6379/2"
        )
    invalid_port = RedisURLError(f"{text!r} has an invalid port; use 1 to 65535")
    try:
        port = 6379 if parts.port is None else parts.port
    except ValueError:
        raise invalid_port from None
    if not 1 <= port <= 65535:
        raise invalid_port

    db_text = parts.path.lstrip("/")
    return RedisURL(
        host=parts.hostname,
        port=port,
        db=_parse_db(db_text) if db_text else 0,
        username=username,
        password=password,
    )
