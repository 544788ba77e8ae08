"""
The command connection: one lazy txredisapi connection that carries every
GET and PUBLISH of the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from redis_ajax_push.errors import REDIS_ERROR, REDIS_UNAVAILABLE, ErrorKind, TaskError
from redis_ajax_push.logs import RepeatedWarnings
from redis_ajax_push.redis_tls import client_tls_options
from redis_ajax_push.redis_url import RedisURL
from redis_ajax_push.sentinel import SentinelEndpoint
from redis_ajax_push.signing import redact

# Connecting gives up after this many seconds; the factory then backs off and
# tries again.
CONNECT_TIMEOUT = 5

# The maximum wait between two reconnection attempts, in seconds. txredisapi
# starts at 1 s and multiplies the delay by e after each failure.
RECONNECT_MAX_DELAY = 5

# Error replies that mean "not now" rather than "never": Redis is loading its
# dataset, a replica lost its master, or a script blocks the server.
TRANSIENT_ERRORS = ("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY", "CLUSTERDOWN")


def reply_error_kind(error: Exception) -> ErrorKind:
    """
    Return the client error for a Redis error reply: L{REDIS_UNAVAILABLE}
    for a transient one, L{REDIS_ERROR} for the rest.
    """
    if str(error).startswith(TRANSIENT_ERRORS):
        return REDIS_UNAVAILABLE
    return REDIS_ERROR


def redis_endpoint(reactor: Any, url: RedisURL) -> IStreamClientEndpoint:
    """
    Build the client endpoint for C{url}: a unix socket, or TCP with TLS on
    top for rediss://, where the server certificate must match the URL's
    host. With Sentinels configured, the endpoint finds the master anew on
    every connection attempt.
    """
    if url.sentinels:
        return SentinelEndpoint(reactor, url, CONNECT_TIMEOUT)
    if url.path is not None:
        return UNIXClientEndpoint(reactor, url.path, timeout=CONNECT_TIMEOUT)
    # parse_redis_url sets exactly one of path and host.
    assert url.host is not None
    endpoint = HostnameEndpoint(reactor, url.host, url.port, timeout=CONNECT_TIMEOUT)
    if url.tls:
        return wrapClientTLS(client_tls_options(url.host, url), endpoint)
    return endpoint


def redis_factory(
    url: RedisURL,
    factory_class: type[txredisapi.RedisFactory] = txredisapi.RedisFactory,
    select_db: bool = True,
) -> Any:
    """
    Build a lazy, reconnecting txredisapi factory for one connection.

    Replies stay raw: C{charset=None} keeps values as the bytes Redis stored,
    and C{convertNumbers=False} stops a stored C{"42"} from coming back as
    the integer 42.
    """
    factory = factory_class(
        str(url),
        url.db if select_db and url.db else None,
        1,
        isLazy=True,
        charset=None,
        password=url.password,
        convertNumbers=False,
        username=url.username,
    )
    factory.maxDelay = RECONNECT_MAX_DELAY
    return factory


class _CommandFactory(txredisapi.RedisFactory):
    """
    Calls C{on_ready} each time its connection becomes usable.
    """

    on_ready: Callable[[], None] = staticmethod(lambda: None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.on_ready()


class CommandConnection:
    """
    Sends GET, PUBLISH and PING on one lazy connection that reconnects with
    backoff.

    Every command is bounded by C{timeout} seconds: txredisapi keeps a
    command waiting for as long as its lazy connection is down, and a client
    must not wait that long.
    """

    log = Logger()

    def __init__(
        self,
        url: RedisURL,
        timeout: float,
        reactor: IReactorTime,
        on_reconnect: Callable[[], None] | None = None,
        warnings: RepeatedWarnings | None = None,
    ) -> None:
        """
        C{on_reconnect} is called each time the connection is ready again
        after its first time.
        """
        self._url = url
        self._timeout = timeout
        self._reactor = reactor
        self._factory = redis_factory(url, _CommandFactory)
        self._factory.on_ready = self._connection_ready
        self._on_reconnect = on_reconnect
        self._warnings = warnings or RepeatedWarnings(reactor)
        self._ready_before = False

    def start(self) -> None:
        """
        Start connecting. Commands sent before the connection is up wait for
        it, within their timeout.
        """
        self._factory.startConnecting(redis_endpoint(self._reactor, self._url))

    def stop(self) -> defer.Deferred[None]:
        """
        Close the connection and stop reconnecting. The Deferred fires once
        the connection is closed.
        """
        return self._factory.disconnect()

    def _connection_ready(self) -> None:
        if self._ready_before and self._on_reconnect is not None:
            self._on_reconnect()
        self._ready_before = True

    @property
    def connected(self) -> bool:
        return self._factory.size > 0

    def get(self, key: str) -> defer.Deferred[bytes | None]:
        """
        Read a key's value: its bytes, or C{None} when it does not exist.

        The Deferred fails with L{TaskError}: L{REDIS_ERROR} for an error
        reply (wrong type, ...) or a reply that is not a string,
        L{REDIS_UNAVAILABLE} when Redis does not reply within the timeout or
        replies that it is not ready (dataset still loading, ...).
        """
        return self._send("GET", key).addCallback(_check_string, key)

    def publish(self, channel: str, message: bytes) -> defer.Deferred[int]:
        """
        Publish C{message} on C{channel}; the Deferred fires with how many
        subscribers received it, or fails as for L{get}.
        """
        return self._send("PUBLISH", channel, message)

    def ping(self) -> defer.Deferred[Any]:
        """
        Send PING; the Deferred fires with the reply, or fails as for L{get}.
        """
        return self._send("PING")

    def _send(self, name: str, *args: str | bytes) -> defer.Deferred[Any]:
        # The hot path: while the connection is up, hand the command straight
        # to the protocol, rather than through txredisapi's connection
        # handler, which waits for a connection in an inlineCallbacks
        # generator on every call.
        protocol = self._factory.pool[0] if self._factory.pool else None
        try:
            if protocol is not None and protocol.connected:
                sent = protocol.execute_command(name, *args)
            else:
                # Waits for the lazy connection, within the timeout below.
                sent = self._factory.handler.execute_command(name, *args)
        except Exception:
            sent = defer.fail()
        sent.addTimeout(self._timeout, self._reactor)
        target = args[0] if args else ""
        return sent.addErrback(self._command_failed, name, target)

    def _command_failed(self, failure: Failure, name: str, target: str | bytes) -> None:
        if isinstance(target, bytes):
            target = target.decode("utf-8", "replace")
        error = failure.value
        if isinstance(error, txredisapi.ResponseError):
            # The first word of an error reply is its code, such as WRONGTYPE.
            code = str(error).split(" ", 1)[0]
            self._warnings.warn(
                self.log,
                "Redis rejected {command} {target}: {error}",
                code,
                command=name,
                target=redact(target),
                error=str(error),
            )
            raise TaskError(reply_error_kind(error), str(error))
        if isinstance(error, txredisapi.ConnectionError):
            raise TaskError(REDIS_UNAVAILABLE, f"{name}: {error}")
        if isinstance(error, defer.TimeoutError):
            raise TaskError(
                REDIS_UNAVAILABLE,
                f"{name}: no answer within {self._timeout} s",
            )
        failure.raiseException()


def _check_string(value: object, key: str) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        raise TaskError(REDIS_ERROR, f"GET {key} returned {type(value).__name__}")
    return value
