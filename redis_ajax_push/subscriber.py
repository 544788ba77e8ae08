"""
The subscriber pool: channels spread over a bounded number of Redis
connections in subscribe mode.

Each channel is subscribed once per daemon however many watches listen to
it, and each connection carries at most C{channels_per_connection} channels.
A new connection is opened only when all others are full, and one that has
carried no channel for C{idle_timeout} seconds is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from redis_ajax_push.commands import redis_endpoint, redis_factory, reply_error_kind
from redis_ajax_push.errors import REDIS_UNAVAILABLE, TaskError
from redis_ajax_push.redis_url import RedisURL
from redis_ajax_push.signing import redact


class Listener(Protocol):
    """
    Receives what arrives on a subscribed channel.
    """

    def message_received(self, message: bytes) -> None:
        """
        Handle one raw message published on the channel.
        """

    def subscription_lost(self) -> None:
        """
        Handle the loss of the connection that carried the channel. The pool
        subscribes again once the connection is back, but messages published
        in between are lost.
        """

    def subscription_restored(self) -> None:
        """
        Handle a new confirmation of the channel after L{subscription_lost}.
        """


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    """
    Hands channel messages to the L{SubscriberConnection} that owns the
    factory.
    """

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.factory.owner.message_received(channel, message)


class _SubscriberFactory(txredisapi.RedisFactory):
    """
    Tells its owner when its one connection becomes usable and when it is
    lost.
    """

    protocol = _SubscriberProtocol
    owner: SubscriberConnection

    def addConnection(self, conn: _SubscriberProtocol) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.owner.connection_ready(conn)

    def delConnection(self, conn: _SubscriberProtocol) -> None:
        super().delConnection(conn)
        self.owner.connection_lost()


class Channel:
    """
    One subscribed channel and the listeners of this daemon that wait on it.
    """

    __slots__ = ("name", "connection", "listeners", "confirmed", "lost", "_waiting")

    def __init__(self, name: str, connection: SubscriberConnection) -> None:
        self.name = name
        self.connection = connection
        self.listeners: list[Listener] = []
        # Messages that arrive before Redis confirms the subscription are
        # dropped: every listener reads the data key after the confirmation,
        # and that read already includes them.
        self.confirmed = False
        # Set when a confirmed subscription is lost with its connection.
        self.lost = False
        # Created by the first listener that waits; most channels never
        # have a second one.
        self._waiting: list[defer.Deferred[None]] | None = None

    def when_confirmed(self) -> defer.Deferred[None]:
        if self.confirmed:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._waiting is None:
            self._waiting = []
        self._waiting.append(waiter)
        return waiter

    def confirm(self) -> None:
        self.confirmed = True
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.callback(None)
        if self.lost:
            self.lost = False
            for listener in list(self.listeners):
                listener.subscription_restored()

    def fail_waiting(self, error: TaskError) -> None:
        """
        Fail the confirmations still awaited.
        """
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.errback(error)

    def connection_lost(self) -> None:
        """
        Mark the subscription as gone with its connection and tell the
        listeners that were confirmed.
        """
        if self.confirmed:
            self.lost = True
        self.confirmed = False
        self.fail_waiting(TaskError(REDIS_UNAVAILABLE, "subscriber connection lost"))
        if self.lost:
            for listener in list(self.listeners):
                listener.subscription_lost()


class Subscription:
    """
    One listener's hold on a channel; L{close} releases it.
    """

    __slots__ = ("_pool", "_channel", "_listener", "_closed")

    def __init__(
        self, pool: SubscriberPool, channel: Channel, listener: Listener
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._listener = listener
        self._closed = False

    def close(self) -> None:
        """
        Stop listening. The channel is unsubscribed when no listener of
        this daemon is left. Closing twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        self._pool.release(self._channel, self._listener)


class SubscriberConnection:
    """
    One Redis connection in subscribe mode and the channels placed on it.
    """

    log = Logger()

    def __init__(
        self, pool: SubscriberPool, url: RedisURL, reactor: IReactorTime
    ) -> None:
        self._pool = pool
        self._reactor = reactor
        self.channels: dict[bytes, Channel] = {}
        self.protocol: _SubscriberProtocol | None = None
        self._ready_before = False
        self._idle_call: IDelayedCall | None = None
        self._factory = redis_factory(url, _SubscriberFactory, select_db=False)
        self._factory.owner = self
        self._factory.startConnecting(redis_endpoint(reactor, url))

    def add(self, channel: Channel) -> None:
        self._cancel_idle_close()
        self.channels[channel.name.encode("utf-8")] = channel
        if self.protocol is not None:
            self._subscribe(self.protocol, channel)

    def remove(self, channel: Channel) -> None:
        del self.channels[channel.name.encode("utf-8")]
        if self.protocol is not None:
            defer.maybeDeferred(self.protocol.unsubscribe, channel.name).addErrback(
                self._log_unsubscribe_failure, channel.name
            )
        if not self.channels:
            self._idle_call = self._reactor.callLater(
                self._pool.idle_timeout, self._pool.close_idle, self
            )

    def _cancel_idle_close(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _subscribe(self, protocol: _SubscriberProtocol, channel: Channel) -> None:
        def confirmed(reply: object) -> None:
            if self.channels.get(channel.name.encode("utf-8")) is channel:
                channel.confirm()

        def failed(failure: Any) -> None:
            # A lost connection is logged once, in connection_lost, and the
            # channel is subscribed again when it is back.
            if not failure.check(txredisapi.ConnectionError):
                self.log.warn(
                    "SUBSCRIBE {channel} failed: {error}",
                    channel=redact(channel.name),
                    error=failure.getErrorMessage(),
                )
            # An error reply such as NOPERM is a refusal rather than an outage,
            # unless it is a transient one such as LOADING.
            kind = REDIS_UNAVAILABLE
            if failure.check(txredisapi.ResponseError):
                kind = reply_error_kind(failure.value)
            detail = f"SUBSCRIBE failed: {failure.getErrorMessage()}"
            channel.fail_waiting(TaskError(kind, detail))

        subscribing = defer.maybeDeferred(protocol.subscribe, channel.name)
        subscribing.addCallbacks(confirmed, failed)

    def _log_unsubscribe_failure(self, failure: Any, name: str) -> None:
        # The connection is gone or going, and with it the subscription.
        self.log.debug(
            "UNSUBSCRIBE {channel} failed: {error}",
            channel=redact(name),
            error=failure.getErrorMessage(),
        )

    def connection_ready(self, protocol: _SubscriberProtocol) -> None:
        self.protocol = protocol
        if self._ready_before:
            self._pool.on_reconnect()
        self._ready_before = True
        if self.channels:
            self.log.info(
                "Subscriber connection ready; subscribing {count} channels",
                count=len(self.channels),
            )
        for channel in list(self.channels.values()):
            self._subscribe(protocol, channel)

    def connection_lost(self) -> None:
        if self.protocol is None:
            return
        self.protocol = None
        if self.channels:
            self.log.warn(
                "Subscriber connection lost with {count} channels; reconnecting",
                count=len(self.channels),
            )
        for channel in list(self.channels.values()):
            channel.connection_lost()

    def message_received(self, channel_name: bytes, message: bytes) -> None:
        channel = self.channels.get(channel_name)
        if channel is None or not channel.confirmed:
            return
        for listener in list(channel.listeners):
            # One listener's bug must not kill the connection, and with it
            # every other channel on it.
            try:
                listener.message_received(message)
            except Exception:
                self.log.failure(
                    "Listener of {channel} failed on a message",
                    channel=redact(channel.name),
                )

    def close(self) -> defer.Deferred[None]:
        """
        Stop reconnecting and close the connection.
        """
        self._cancel_idle_close()
        return self._factory.disconnect()


class _NoListener:
    """
    Listens to the health probe channel and ignores everything.
    """

    def message_received(self, message: bytes) -> None:
        pass

    def subscription_lost(self) -> None:
        pass

    def subscription_restored(self) -> None:
        pass


_NO_LISTENER = _NoListener()


class SubscriberPool:
    """
    Places channels on subscriber connections and opens and closes those
    connections as the number of channels changes.
    """

    def __init__(
        self,
        url: RedisURL,
        channels_per_connection: int,
        idle_timeout: float,
        confirm_timeout: float,
        reactor: IReactorTime,
        probe_channel: str = "RA_HEALTH",
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        """
        C{on_reconnect} is called each time a subscriber connection is ready
        again after its first time.
        """
        self.on_reconnect = on_reconnect
        self._url = url
        self._per_connection = channels_per_connection
        self.idle_timeout = idle_timeout
        self._confirm_timeout = confirm_timeout
        self._reactor = reactor
        self.connections: list[SubscriberConnection] = []
        self._channels: dict[str, Channel] = {}
        self._probe_channel = probe_channel

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    async def subscribe(self, name: str, listener: Listener) -> Subscription:
        """
        Add C{listener} to channel C{name} and wait until Redis has confirmed
        the subscription.

        @raise TaskError: L{REDIS_UNAVAILABLE} when no confirmation arrives
            within the confirm timeout or the connection is lost first.
        """
        channel = self._channels.get(name)
        if channel is None:
            channel = Channel(name, self._connection_with_room())
            self._channels[name] = channel
            channel.connection.add(channel)
        channel.listeners.append(listener)
        subscription = Subscription(self, channel, listener)

        confirmation = channel.when_confirmed()
        confirmation.addTimeout(self._confirm_timeout, self._reactor)
        try:
            await confirmation
        except defer.TimeoutError:
            subscription.close()
            raise TaskError(REDIS_UNAVAILABLE, f"SUBSCRIBE {name} timed out") from None
        except BaseException:
            subscription.close()
            raise
        return subscription

    async def probe(self) -> None:
        """
        Subscribe a probe channel and release it at once, to check that the
        pool can subscribe.

        @raise TaskError: as for L{subscribe}.
        """
        subscription = await self.subscribe(self._probe_channel, _NO_LISTENER)
        subscription.close()

    def release(self, channel: Channel, listener: Listener) -> None:
        channel.listeners.remove(listener)
        if channel.listeners:
            return
        if self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
        channel.connection.remove(channel)

    def _connection_with_room(self) -> SubscriberConnection:
        # Prefer a connection that is up: one waiting to reconnect would hold
        # the new channel until its next attempt, possibly seconds away.
        with_room = [
            connection
            for connection in self.connections
            if len(connection.channels) < self._per_connection
        ]
        for connection in with_room:
            if connection.protocol is not None:
                return connection
        if with_room:
            return with_room[0]
        connection = SubscriberConnection(self, self._url, self._reactor)
        self.connections.append(connection)
        return connection

    def close_idle(self, connection: SubscriberConnection) -> None:
        if connection.channels or connection not in self.connections:
            return
        self.connections.remove(connection)
        connection.close()

    def close(self) -> defer.Deferred[Any]:
        """
        Close every subscriber connection. The Deferred fires once all are
        closed.
        """
        connections, self.connections = self.connections, []
        return defer.gatherResults([connection.close() for connection in connections])
