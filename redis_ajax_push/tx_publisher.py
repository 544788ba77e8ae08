"""
Task updates from a Twisted application: L{TxTaskPublisher}, the twin of
L{redis_ajax_push.publisher.TaskPublisher} on txredisapi.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from redis_ajax_push.commands import redis_endpoint, redis_factory
from redis_ajax_push.config import Config, TaskIdConfig
from redis_ajax_push.redis_url import parse_redis_url
from redis_ajax_push.signing import TaskIdSigner, signer_for
from redis_ajax_push.task_update import (
    SET_AND_PUBLISH,
    PublishError,
    TaskWrite,
    TaskWriter,
    decode_state,
)

T = TypeVar("T")


class TxTaskPublisher:
    """
    Writes task states for raps on a txredisapi connection, with the same
    methods, formats and checks as L{TaskPublisher}, each returning a
    Deferred.

    The write is one C{EVAL} (C{EVALSHA} after the script's first run on the connection)
    that stores the data key and publishes the message atomically.

    Create the connection with C{convertNumbers=False}: with number
    conversion, txredisapi returns a stored C{"42"} as an integer. An invalid
    task id, status or field gives a failed Deferred with L{PublishError}
    before any Redis command is sent.

    @param timeout: seconds after which a command still waiting for Redis
        fails with C{defer.TimeoutError}; C{None} waits as long as the
        connection does. A lazy txredisapi connection keeps commands waiting
        while it reconnects.
    """

    def __init__(
        self,
        redis_connection: Any,
        prefix: str = "RA_",
        ttl: int | None = None,
        inline: bool = False,
        *,
        task_id_rule: TaskIdConfig | None = None,
        signer: TaskIdSigner | None = None,
        timeout: float | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        self._writer = TaskWriter(prefix, ttl, inline, task_id_rule, signer)
        self.redis = redis_connection
        self._timeout = timeout
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self._owned_factory: Any = None

    @classmethod
    def from_url(cls, url: str, reactor: Any = None, **options: Any) -> TxTaskPublisher:
        """
        Open a lazy, reconnecting txredisapi connection to C{url}
        (C{redis://host:port/db} or C{unix:///path?db=N}) that returns values
        as raw bytes, and return a publisher using it. L{close} closes it.
        C{options} are those of L{TxTaskPublisher}.

        @raise redis_ajax_push.redis_url.RedisURLError: for an invalid URL.
        """
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        parsed = parse_redis_url(url)
        factory = redis_factory(parsed)
        factory.startConnecting(redis_endpoint(reactor, parsed))
        publisher = cls(factory.handler, reactor=reactor, **options)
        publisher._owned_factory = factory
        return publisher

    @classmethod
    def from_config(
        cls,
        config: Config,
        redis_connection: Any,
        ttl: int | None = None,
        inline: bool = False,
    ) -> TxTaskPublisher:
        """
        Return a publisher that follows a daemon's config: its prefix, its
        task id rule and, when it has secrets, signed ids only.
        """
        return cls(
            redis_connection,
            config.redis.prefix,
            ttl,
            inline,
            task_id_rule=config.task_id,
            signer=signer_for(config),
        )

    @property
    def prefix(self) -> str:
        return self._writer.keys.prefix

    def progress(
        self, task_id: str, status: str = "running", **fields: Any
    ) -> defer.Deferred[int]:
        """
        Store a non-final state and announce it with C{update}, as
        L{TaskPublisher.progress} does.
        """
        return self._send(lambda: self._writer.progress(task_id, status, fields))

    def done(self, task_id: str, **fields: Any) -> defer.Deferred[int]:
        """
        Store the final state with status C{done} and announce it with
        C{done}, as L{TaskPublisher.done} does.
        """
        return self._send(lambda: self._writer.done(task_id, fields))

    def fail(
        self, task_id: str, error_message: str, **fields: Any
    ) -> defer.Deferred[int]:
        """
        Store the final state of a failed task and announce it with C{done},
        as L{TaskPublisher.fail} does.
        """
        return self._send(lambda: self._writer.fail(task_id, error_message, fields))

    def get(self, task_id: str) -> defer.Deferred[dict[str, Any] | None]:
        """
        Read a task's current state; the Deferred fires with C{None} when its
        data key does not exist, and fails with L{StoredTaskDataError} when
        the stored value is not a JSON object.
        """
        try:
            key = self._writer.data_key(task_id)
        except PublishError:
            return defer.fail()
        reading = self._bounded(self.redis.get(key))
        return reading.addCallback(_decode_or_none)

    def close(self) -> defer.Deferred[None]:
        """
        Close the connection that L{from_url} opened. A connection passed to
        the constructor is left to its owner.
        """
        if self._owned_factory is None:
            return defer.succeed(None)
        factory, self._owned_factory = self._owned_factory, None
        closed: defer.Deferred[None] = factory.disconnect()
        return closed

    def _send(self, build: Callable[[], TaskWrite]) -> defer.Deferred[int]:
        try:
            write = build()
        except PublishError:
            return defer.fail()
        running = self.redis.eval(SET_AND_PUBLISH, [write.data_key], write.script_args)
        return self._bounded(running).addCallback(int)

    def _bounded(self, command: defer.Deferred[T]) -> defer.Deferred[T]:
        if self._timeout is not None:
            command.addTimeout(self._timeout, self._reactor)
        return command


def _decode_or_none(raw: bytes | str | None) -> dict[str, Any] | None:
    return None if raw is None else decode_state(raw)
