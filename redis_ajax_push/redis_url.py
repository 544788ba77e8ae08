"""
Redis server addresses given as URLs: C{redis://[[user]:password@]host[:port][/db]},
C{rediss://} for the same over TLS, and
C{unix://[[user]:password@]/path/to/socket[?db=N]}.
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
    # rediss:// sets tls. The files are PEM paths from the [redis] config
    # keys tls_ca, tls_cert and tls_key: None trusts the system's CAs and
    # sends no client certificate.
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # With sentinels set, the master's address comes from these Sentinels
    # and host and port are not used; db, credentials and TLS still apply.
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_service: str | None = None

    def __str__(self) -> str:
        # Credentials are left out: this text goes into logs.
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        if self.sentinels:
            addresses = ", ".join(_host_port(*address) for address in self.sentinels)
            return (
                f"master {self.sentinel_service} of Sentinels {addresses} "
                f"({scheme}, db {self.db})"
            )
        return f"{scheme}://{_host_port(self.host or '', self.port)}/{self.db}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_db(text: str) -> int:
    # isdigit() alone accepts digits of other scripts, such as "٣".
    if not (text.isascii() and text.isdigit()):
        raise RedisURLError(f"database number {text!r} is not a non-negative integer")
    return int(text)


def parse_redis_url(text: str) -> RedisURL:
    """
    Parse a C{redis://}, C{rediss://} or C{unix://} URL.

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

    if parts.scheme not in ("redis", "rediss"):
        raise RedisURLError(
            f"{text!r} has an unsupported scheme; use redis://host:port/db, "
            "rediss://host:port/db (TLS) or unix:///path/to/socket"
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
        tls=parts.scheme == "rediss",
    )
