"""
Redis Sentinel: a client endpoint that connects to the current master of a
service, asking the Sentinels for its address before every attempt.

txredisapi reconnects through this endpoint like through any other, so after
a failover the command connection and the subscriber pool reconnect to the
new master, the pool subscribes its channels again and every open watch
reads its data key again.

The Sentinel connections are short plain TCP connections without AUTH: the
Sentinels must accept unauthenticated clients on a trusted network.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from redis_ajax_push.redis_tls import client_tls_options
from redis_ajax_push.redis_url import RedisURL

# Sentinel publishes this on failover: "<service> <old ip> <old port> <new ip>
# <new port>".
SWITCH_MASTER_CHANNEL = b"+switch-master"


# What a failed connection or an unanswered command raises. Twisted's own
# connection errors, such as its ConnectionRefusedError, are not OSErrors.
CONNECTION_ERRORS = (
    OSError,
    error.ConnectError,
    error.ConnectionClosed,
    error.TimeoutError,
    defer.TimeoutError,
)


class SentinelError(Exception):
    """
    No Sentinel reported a master, or the reported address is not a usable
    master.
    """


class ReplyError(Exception):
    """
    An error reply from Redis or Sentinel, such as C{-NOAUTH ...}.
    """


class _IncompleteReplyError(Exception):
    """
    The buffer ends before the reply does.
    """


def encode_command(*arguments: str | bytes) -> bytes:
    """
    Encode one command as a RESP array of bulk strings.
    """
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        data = argument.encode("utf-8") if isinstance(argument, str) else argument
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buffer: bytes, start: int = 0) -> tuple[Any, int]:
    """
    Parse the RESP2 reply that starts at C{start}; return it and the offset
    after it. Bulk strings are bytes, a null is None, an error reply is a
    L{ReplyError}.

    @raise _IncompleteReplyError: when C{buffer} ends before the reply does.
    @raise ValueError: for bytes that are not RESP2.
    """
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _IncompleteReplyError()
    kind, line, offset = buffer[start : start + 1], buffer[start + 1 : end], end + 2
    if kind == b"+":
        return line, offset
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), offset
    if kind == b":":
        return int(line), offset
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, offset
        if len(buffer) < offset + length + 2:
            raise _IncompleteReplyError()
        return buffer[offset : offset + length], offset + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, offset
        items = []
        for _ in range(count):
            item, offset = parse_reply(buffer, offset)
            items.append(item)
        return items, offset
    raise ValueError(f"not a RESP2 reply: {buffer[start:end]!r}")


class _RESPProtocol(Protocol):
    """
    Sends commands when connected and passes each reply to
    L{reply_received}.
    """

    # Twisted's stubs declare ITransport, which lacks abortConnection.
    transport: Any

    def __init__(self, commands: list[bytes]) -> None:
        self._commands = commands
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(b"".join(self._commands))

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        offset = 0
        try:
            while offset < len(self._buffer) and not self.replies_done():
                reply, offset = parse_reply(self._buffer, offset)
                self.reply_received(reply)
        except _IncompleteReplyError:
            pass
        except ValueError as error:
            self.protocol_error(error)
            return
        rest, self._buffer = self._buffer[offset:], b""
        if self.replies_done():
            self.after_replies(rest)
        else:
            self._buffer = rest

    def replies_done(self) -> bool:
        return False

    def reply_received(self, reply: Any) -> None:
        raise NotImplementedError

    def after_replies(self, rest: bytes) -> None:
        pass

    def protocol_error(self, error: Exception) -> None:
        self.transport.abortConnection()


class _CommandProtocol(_RESPProtocol):
    """
    Sends commands and fires L{replies} with their replies.
    """

    def __init__(self, commands: list[bytes]) -> None:
        super().__init__(commands)
        # Fires with the list of replies; _MasterCheck fires it with the
        # protocol it handed the connection to.
        self.replies: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self._received: list[Any] = []

    def _cancel(self, replies: defer.Deferred[Any]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def replies_done(self) -> bool:
        return len(self._received) == len(self._commands)

    def reply_received(self, reply: Any) -> None:
        self._received.append(reply)

    def after_replies(self, rest: bytes) -> None:
        if not self.replies.called:
            self.replies.callback(self._received)

    def protocol_error(self, error: Exception) -> None:
        super().protocol_error(error)
        if not self.replies.called:
            self.replies.errback(error)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.replies.called:
            self.replies.errback(reason)


class _MasterCheck(_CommandProtocol):
    """
    Sends AUTH (when the URL has a password) and ROLE, and once the server
    reports the master role hands the connection over to the protocol of
    C{factory}, which then runs as if it had connected itself. L{replies}
    fires with that protocol, or fails when the role is not master.
    """

    def __init__(self, factory: IProtocolFactory, url: RedisURL, address: str) -> None:
        commands = []
        if url.password is not None:
            credentials = [url.username] if url.username else []
            commands.append(encode_command("AUTH", *credentials, url.password))
        commands.append(encode_command("ROLE"))
        super().__init__(commands)
        self._factory = factory
        self._address = address
        self.wrapped: IProtocol | None = None
        self.closed = False
        # Called once the handed-over connection is lost.
        self.on_lost: list[Any] = []

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        super().dataReceived(data)

    def after_replies(self, rest: bytes) -> None:
        problem = self._problem()
        if problem is not None:
            self.transport.loseConnection()
            if not self.replies.called:
                self.replies.errback(SentinelError(f"{self._address}: {problem}"))
            return
        wrapped = self._factory.buildProtocol(self.transport.getPeer())
        if wrapped is None:
            self.transport.loseConnection()
            return
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        if rest:
            wrapped.dataReceived(rest)
        if not self.replies.called:
            self.replies.callback(wrapped)

    def _problem(self) -> str | None:
        for reply in self._received:
            if isinstance(reply, ReplyError):
                return f"error reply {reply}"
        role = self._received[-1]
        if not isinstance(role, list) or not role or role[0] != b"master":
            found = role[0].decode("ascii", "replace") if role else "?"
            return f"role is {found}, not master"
        return None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        if self.wrapped is None:
            super().connectionLost(reason)
            return
        try:
            self.wrapped.connectionLost(reason)
        finally:
            for callback in self.on_lost:
                callback()


class _SwitchMasterListener(_RESPProtocol):
    """
    Subscribes to Sentinel's C{+switch-master} and calls C{on_switch} with
    the new master's address when C{service} fails over.
    """

    def __init__(self, service: str, on_switch: Any) -> None:
        super().__init__([encode_command("SUBSCRIBE", SWITCH_MASTER_CHANNEL)])
        self._service = service
        self._on_switch = on_switch
        self.subscribed: defer.Deferred[None] = defer.Deferred(self._cancel)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def _cancel(self, subscribed: defer.Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def reply_received(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) != 3:
            return
        kind, channel, payload = reply
        if kind == b"subscribe" and not self.subscribed.called:
            self.subscribed.callback(None)
        elif kind == b"message" and channel == SWITCH_MASTER_CHANNEL:
            fields = payload.decode("utf-8", "replace").split()
            if len(fields) == 5 and fields[0] == self._service:
                self._on_switch((fields[3], int(fields[4])))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.subscribed.called:
            self.subscribed.errback(reason.value)
        self.lost.callback(None)


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """
    Connects to the master of C{url.sentinel_service}: asks the Sentinels of
    C{url.sentinels} in turn for its address, connects (over TLS for a
    rediss:// URL, verified against that address), checks that ROLE
    returns master, and only then hands the connection to the caller's
    protocol. Any failure fails C{connect()}, so txredisapi tries again
    after its backoff delay.

    While the connection is up, one Sentinel connection listens for
    C{+switch-master}; when the service fails over, the connection is
    closed. Sentinel demotes a live old master and closes its clients only
    some seconds after the switch (about 10 s with Redis 7.0), and the
    daemon must not keep reading from it until then.
    """

    log = Logger()

    def __init__(self, reactor: Any, url: RedisURL, timeout: float) -> None:
        assert url.sentinel_service is not None
        self._reactor = reactor
        self._url = url
        self._service = url.sentinel_service
        self._timeout = timeout
        self._last_master: tuple[str, int] | None = None

    def connect(self, protocol_factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return defer.Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        try:
            host, port = await self.master_address()
            protocol, check = await self._connect_master(factory, host, port)
        except (SentinelError, *CONNECTION_ERRORS) as failure:
            self.log.warn(
                "Cannot connect to the master of {service}: {error}",
                service=self._service,
                error=str(failure) or type(failure).__name__,
            )
            raise
        if self._last_master != (host, port):
            self.log.info(
                "Connected to master {service} at {host}:{port}",
                service=self._service,
                host=host,
                port=port,
            )
            self._last_master = (host, port)
        self._watch_failover(check, (host, port))
        return protocol

    async def master_address(self) -> tuple[str, int]:
        """
        Ask the Sentinels in turn for the master's address; return the first
        one reported.

        @raise SentinelError: when no Sentinel reports one.
        """
        problems = []
        for host, port in self._url.sentinels:
            try:
                replies = await self._ask(
                    host,
                    port,
                    encode_command(
                        "SENTINEL", "get-master-addr-by-name", self._service
                    ),
                )
            except (*CONNECTION_ERRORS, ValueError) as failure:
                problems.append(f"{host}:{port}: {failure or type(failure).__name__}")
                continue
            address = replies[0]
            if isinstance(address, ReplyError):
                problems.append(f"{host}:{port}: error reply {address}")
                continue
            if not isinstance(address, list) or len(address) != 2:
                problems.append(f"{host}:{port}: no master named {self._service}")
                continue
            return address[0].decode("ascii"), int(address[1])
        raise SentinelError(
            f"no Sentinel reported master {self._service}: " + "; ".join(problems)
        )

    async def _ask(self, host: str, port: int, command: bytes) -> list[Any]:
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
        protocol = _CommandProtocol([command])
        connecting = connectProtocol(endpoint, protocol)
        connecting.addTimeout(self._timeout, self._reactor)
        await connecting
        try:
            replies = protocol.replies
            replies.addTimeout(self._timeout, self._reactor)
            return await replies
        finally:
            protocol.transport.loseConnection()

    async def _connect_master(
        self, factory: IProtocolFactory, host: str, port: int
    ) -> tuple[IProtocol, _MasterCheck]:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, port, timeout=self._timeout
        )
        if self._url.tls:
            endpoint = wrapClientTLS(client_tls_options(host, self._url), endpoint)
        check = _MasterCheck(factory, self._url, f"{host}:{port}")
        connecting = connectProtocol(endpoint, check)
        connecting.addTimeout(self._timeout, self._reactor)
        await connecting
        checked = check.replies
        checked.addTimeout(self._timeout, self._reactor)
        protocol: IProtocol = await checked
        return protocol, check

    def _watch_failover(self, check: _MasterCheck, master: tuple[str, int]) -> None:
        def switched(new_master: tuple[str, int]) -> None:
            if new_master == master or check.transport is None:
                return
            self.log.warn(
                "Master {service} moved from {old} to {new}; reconnecting",
                service=self._service,
                old=f"{master[0]}:{master[1]}",
                new=f"{new_master[0]}:{new_master[1]}",
            )
            check.transport.loseConnection()

        # NOTE: a switch between the ROLE check and the SUBSCRIBE below is
        # missed; Sentinel then closes the connection when it demotes the
        # old master.
        listening = defer.Deferred.fromCoroutine(self._listen(check, switched))
        listening.addErrback(
            lambda failure: self.log.failure(
                "Failover listener of {service} failed",
                failure,
                service=self._service,
            )
        )

    async def _listen(self, check: _MasterCheck, switched: Any) -> None:
        """
        Keep one C{+switch-master} subscription open, trying the Sentinels
        in turn, for as long as the master connection is up.
        """
        current: list[_SwitchMasterListener] = []

        def master_lost() -> None:
            for listener in current:
                if listener.transport is not None:
                    listener.transport.loseConnection()

        check.on_lost.append(master_lost)
        for host, port in self._url.sentinels:
            if check.closed:
                return
            listener = _SwitchMasterListener(self._service, switched)
            current[:] = [listener]
            endpoint = HostnameEndpoint(
                self._reactor, host, port, timeout=self._timeout
            )
            try:
                connecting = connectProtocol(endpoint, listener)
                connecting.addTimeout(self._timeout, self._reactor)
                await connecting
                subscribing = listener.subscribed
                subscribing.addTimeout(self._timeout, self._reactor)
                await subscribing
            except CONNECTION_ERRORS as failure:
                if check.closed:
                    return
                self.log.warn(
                    "Cannot listen for failovers on Sentinel {host}:{port}: {error}",
                    host=host,
                    port=port,
                    error=str(failure) or type(failure).__name__,
                )
                if listener.transport is not None:
                    listener.transport.abortConnection()
                continue
            await listener.lost
        if not check.closed:
            # NOTE: each Sentinel is tried once per master connection; the
            # next reconnection starts over.
            self.log.warn(
                "No Sentinel keeps a failover listener for {service}; a "
                "failover that leaves the old master running goes unnoticed "
                "until Sentinel demotes it",
                service=self._service,
            )
