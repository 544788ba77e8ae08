"""
The watch and stream modes of C{GET /task/<task id>}: admission, the
subscribe-then-read start, the kill, heartbeats, and turning channel events
into responses.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Request

from redis_ajax_push import sse
from redis_ajax_push.channel import set_outcome
from redis_ajax_push.commands import CommandConnection
from redis_ajax_push.config import Config
from redis_ajax_push.errors import KILLED, REDIS_UNAVAILABLE, TaskError
from redis_ajax_push.heartbeat import HeartbeatWheel
from redis_ajax_push.logs import RepeatedWarnings
from redis_ajax_push.metrics import Metrics
from redis_ajax_push.protocol import DONE, UPDATE, TaskKeys, kill_message
from redis_ajax_push.registry import WatchRegistry
from redis_ajax_push.signing import redact
from redis_ajax_push.subscriber import SubscriberPool, Subscription
from redis_ajax_push.watch import RECHECK, TIMEOUT, Event, Message, Watch

# Sets the status of an error response and returns its JSON body.
ErrorResponder = Callable[[Request, TaskError, str], bytes]

# Reads a task's data key: its bytes and the status in its JSON, or raises
# TaskError.
TaskReader = Callable[[str], Awaitable[tuple[bytes, object]]]

WATCH_HEARTBEAT = b"\n"

# Random bytes in a watch id, which the kill message of the watch carries.
WATCH_ID_BYTES = 8

# Seconds between two reads of the data key after a resubscription while
# Redis does not reply.
RECHECK_RETRY_DELAY = 0.5


class WatchHandler:
    """
    Serves watch (long-poll) and stream (Server-Sent Events) requests.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        commands: CommandConnection,
        pool: SubscriberPool,
        read_task: TaskReader,
        error_response: ErrorResponder,
        reactor: IReactorTime,
        metrics: Metrics,
        warnings: RepeatedWarnings,
    ) -> None:
        self._commands = commands
        self._warnings = warnings
        self._pool = pool
        self._read_task = read_task
        self._error_response = error_response
        self._reactor = reactor
        self._keys = TaskKeys(config.redis.prefix)
        self._watch_config = config.watch
        self._limits = config.limits
        self.watches = WatchRegistry(
            config.limits.max_watches, config.limits.max_watches_per_client
        )
        self._metrics = metrics
        interval = config.watch.heartbeat_interval
        self._heartbeats = (
            HeartbeatWheel(interval, reactor, metrics.heartbeats.inc)
            if interval > 0
            else None
        )
        self._gauges = {
            mode: metrics.watch_gauges(mode) for mode in ("watch", "stream")
        }

    def _admit(self, request: Request, task_id: str, mode: str) -> Watch:
        """
        Admit and register a new watch, or raise L{TaskError} when a limit
        refuses it. L{_release} undoes it.
        """
        watch = Watch(
            task_id,
            secrets.token_hex(WATCH_ID_BYTES),
            self._reactor,
            self._limits.max_message_bytes,
            self._watch_config.resubscribe_timeout,
            self._warnings,
        )
        # UNIX socket clients have no host; they count as one client.
        client = getattr(request.getClientAddress(), "host", "") or ""
        self.watches.add(watch, client)
        self._gauges[mode][0].inc()
        watch.opened_at = self._reactor.seconds()
        return watch

    def _release(
        self,
        request: Request,
        watch: Watch,
        mode: str,
        subscription: Subscription | None,
        heartbeat: int | None,
    ) -> None:
        """
        Release what a watch holds, whatever ended its request, and record
        it in the metrics.
        """
        if heartbeat is not None and self._heartbeats is not None:
            self._heartbeats.leave(request, heartbeat)
        if subscription is not None:
            subscription.close()
        watch.close()
        self.watches.remove(watch)
        open_watches, duration = self._gauges[mode]
        open_watches.dec()
        duration.observe(self._reactor.seconds() - watch.opened_at)
        outcome = watch.outcome
        if isinstance(outcome, TaskError) and outcome.kind is KILLED:
            self._metrics.kills.inc()

    async def _announce(self, watch: Watch) -> None:
        """
        Publish the kill that ends every older watch of the task, unless
        this watch has already ended, killed by a newer one.
        """
        if not watch.ended:
            channel = self._keys.channel(watch.task_id)
            await self._commands.publish(channel, kill_message(watch.watch_id))
        if self._limits.watch_timeout > 0:
            watch.start_timeout(self._limits.watch_timeout)

    def _start_heartbeat(self, request: Request, payload: bytes) -> int | None:
        """
        Start writing C{payload} every heartbeat interval, unless heartbeats
        are off.
        """
        if self._heartbeats is None:
            return None
        return self._heartbeats.join(request, payload)

    def _observe_delivery(self, event: Event) -> None:
        """
        Record how long a channel message took from its arrival to the
        write it caused.
        """
        if isinstance(event, Message):
            latency = self._reactor.seconds() - event.arrived
            self._metrics.delivery_latency.observe(latency)

    async def _resolve(
        self, watch: Watch, event: Event, last_sent: bytes
    ) -> tuple[bytes, str] | None:
        """
        Turn an event into the state to send and its status (C{update} or
        C{done}), or C{None} when there is nothing new to send.

        @raise TaskError: for an event that ends the watch with an error.
        """
        if isinstance(event, TaskError):
            raise event
        if isinstance(event, Message) and event.raw is not None:
            return event.raw, event.status
        if event is RECHECK or event is TIMEOUT or isinstance(event, Message):
            if event is RECHECK:
                read = await self._read_after_reconnect(watch)
                if read is None:
                    return None
                raw, status = read
            else:
                raw, status = await self._read_task(watch.task_id)
            done = status == DONE or (
                isinstance(event, Message) and event.status == DONE
            )
            if event is RECHECK and raw == last_sent and not done:
                # Nothing was missed while the subscription was down.
                return None
            return raw, DONE if done else UPDATE
        raise AssertionError(f"unknown watch event {event!r}")

    async def _read_after_reconnect(self, watch: Watch) -> tuple[bytes, object] | None:
        """
        Read the data key of a watch whose subscription came back after a
        lost connection; C{None} when the watch ended meanwhile.

        The command connection may still be reconnecting then, for example
        while Sentinel promotes a new master, so a read that fails with
        L{REDIS_UNAVAILABLE} is tried again until C{resubscribe_timeout} has
        passed.
        """
        deadline = self._reactor.seconds() + self._watch_config.resubscribe_timeout
        while True:
            try:
                return await self._read_task(watch.task_id)
            except TaskError as error:
                if error.kind is not REDIS_UNAVAILABLE:
                    raise
                if self._reactor.seconds() + RECHECK_RETRY_DELAY > deadline:
                    raise
            await deferLater(self._reactor, RECHECK_RETRY_DELAY, lambda: None)
            if watch.ended:
                return None

    async def watch(self, request: Request, task_id: str) -> bytes:
        """
        Respond to a watch: the data key at once when the task is done, else the
        state after the next update, kill, timeout or error.
        """
        # Tens of thousands of these coroutines wait at once, so they hold
        # their resources in locals and release them in one finally block,
        # rather than in nested context managers that each keep a frame.
        # NOTE: the suspended coroutine and the Deferreds it waits on still
        # cost about 1 KB per watch (docs/performance.md).
        try:
            watch = self._admit(request, task_id, "watch")
        except TaskError as error:
            return self._error_response(request, error, task_id)
        subscription = heartbeat = None
        try:
            subscription = await self._pool.subscribe(
                self._keys.channel(task_id), watch
            )
            # Read only now that the channel is subscribed, so that an update
            # published in between is in what this read returns.
            raw, status = await self._read_task(task_id)
            if status == DONE:
                return raw
            await self._announce(watch)
            heartbeat = self._start_heartbeat(request, WATCH_HEARTBEAT)
            while True:
                event = await watch.wait()
                resolved = await self._resolve(watch, event, raw)
                if resolved is not None:
                    # Written here rather than when the request finishes, so
                    # that the delivery latency includes the write.
                    request.write(resolved[0])
                    self._observe_delivery(event)
                    return b""
        except TaskError as error:
            return self._error_response(request, error, task_id)
        finally:
            self._release(request, watch, "watch", subscription, heartbeat)

    async def stream(self, request: Request, task_id: str) -> bytes:
        """
        Serve a stream: the current state as the first event, then one
        event per update until C{done}. Errors before the first event get
        the usual status and JSON; later ones become an C{error} event.
        """
        try:
            watch = self._admit(request, task_id, "stream")
        except TaskError as error:
            return self._error_response(request, error, task_id)
        subscription = heartbeat = None
        try:
            subscription = await self._pool.subscribe(
                self._keys.channel(task_id), watch
            )
            raw, status = await self._read_task(task_id)
            request.setHeader(b"Content-Type", sse.CONTENT_TYPE)
            retry_ms = round(self._watch_config.stream_retry * 1000)
            status = DONE if status == DONE else UPDATE
            request.write(sse.sse_retry(retry_ms) + sse.sse_event(status, raw))
            if status == DONE:
                return b""
            try:
                await self._announce(watch)
                heartbeat = self._start_heartbeat(request, sse.HEARTBEAT)
                last_sent = raw
                while True:
                    event = await watch.wait()
                    resolved = await self._resolve(watch, event, last_sent)
                    if resolved is None:
                        continue
                    last_sent, status = resolved
                    request.write(sse.sse_event(status, last_sent))
                    self._observe_delivery(event)
                    if status == DONE or event is TIMEOUT:
                        return b""
            except TaskError as error:
                self._log_error(task_id, error)
                set_outcome(request, error.kind.code)
                return sse.sse_event("error", error.kind.body)
        except TaskError as error:
            return self._error_response(request, error, task_id)
        finally:
            self._release(request, watch, "stream", subscription, heartbeat)

    def _log_error(self, task_id: str, error: TaskError) -> None:
        if error.kind.http_status >= 500:
            self._warnings.warn(
                self.log,
                "Stream of task {task_id} failed: {error}",
                error.kind.code,
                task_id=redact(task_id),
                error=str(error),
            )
