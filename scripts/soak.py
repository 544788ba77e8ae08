#!/usr/bin/env python3
"""
Leak soak for raps: drive many watch cycles at a daemon and check that
nothing is left behind.

The script starts a private redis-server on a free loopback port and the
daemon as a child process (this script with the hidden --serve option), so
that the daemon's RSS and open file descriptors can be read from
/proc/<pid>. It sends waves of concurrent watches over raw sockets:
watches abandoned at a random early moment, while waiting before the
response headers, or after the first heartbeat; watches ended by a "done" or
"update" message; watches killed by a second watch of the same task; and
polls and invalid requests in between. It compares the daemon's figures
after the last wave with a baseline taken after a warm-up wave, prints PASS
or FAIL and exits with status 1 on FAIL.

The child reads commands on its stdin and writes one JSON line per command
on its stdout: "stats" counts live objects with gc (Watch, Request, ...)
and returns them with the subscriber pool's channels and connections and
the open file descriptors; "pool" returns only the cheap pool figures.
Closing its stdin stops it.

Usage: python scripts/soak.py [--cycles N] [--concurrency C] [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import random
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

LOOPBACK = "127.0.0.1"
DATA_PREFIX = "RA_D_"
CHANNEL_PREFIX = "RA_SC_"
RUNNING = b'{"status": "running", "progress": 0}'
DONE = b'{"status": "done", "progress": 100}'
HEARTBEAT_CHUNK = b"1\r\n\n\r\n"

# The parent's own Redis connections carry this name and the daemon's have
# none, so CLIENT LIST can distinguish them.
PARENT_CLIENT_NAME = "raps-soak"

# Object types counted in the daemon after gc.collect(): the package that
# defines the class (any module in it, as classes may move between modules)
# and the class name.
COUNTED_TYPES = [
    ("redis_ajax_push", "Watch"),
    ("redis_ajax_push", "Channel"),
    ("redis_ajax_push", "Subscription"),
    ("redis_ajax_push", "SubscriberConnection"),
    ("twisted.web.server", "Request"),
    ("twisted.web.http", "HTTPChannel"),
    ("twisted.internet.task", "LoopingCall"),
    ("twisted.internet.defer", "Deferred"),
]

# Exit statuses: argparse already exits with 2 on a usage error.
EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 2

# Unexpected results shown in full; the rest are only counted.
MAX_REPORTED_PROBLEMS = 20
# Daemon log lines echoed to stderr; the rest are only counted.
MAX_ECHOED_LOG_LINES = 20


class SoakError(Exception):
    """
    The soak could not run: a process did not start or stopped responding.
    """


# --- command line -----------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number more than 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number 0 or more, not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Leak soak for raps: run watch cycles against a daemon in a child "
            "process, then check that its RSS, open file descriptors, Redis "
            "clients and live Watch objects are back to their baseline. "
            "Everything listens on 127.0.0.1 only."
        ),
    )
    parser.add_argument(
        "--cycles",
        type=positive_int,
        default=100_000,
        help="watch requests to send after the warm-up (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=200,
        help="watch requests per wave, all open at once (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-waves",
        type=positive_int,
        default=1,
        help=(
            "waves to run before the baseline is taken, so that allocator "
            "warm-up does not count as growth (default: %(default)s)"
        ),
    )

    parser.add_argument(
        "--max-seconds",
        type=positive_float,
        default=1800.0,
        help=(
            "stop starting new waves after this many seconds of load; the "
            "run then fails as incomplete (default: %(default)s)"
        ),
    )

    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=0.25,
        help="the daemon's watch.heartbeat_interval in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=non_negative_float,
        default=1.0,
        help=(
            "the daemon's redis.subscriber_idle_timeout in seconds "
            "(default: %(default)s)"
        ),
    )

    parser.add_argument(
        "--settle-seconds",
        type=positive_float,
        default=15.0,
        help=(
            "maximum seconds to wait, after the idle timeout, for the "
            "subscriber pool to close its connections before a measurement "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--request-timeout",
        type=positive_float,
        default=30.0,
        help=(
            "seconds one scenario (one or two watches) may take before it "
            "counts as failed (default: %(default)s)"
        ),
    )

    parser.add_argument(
        "--rss-limit-mb",
        type=positive_float,
        default=10.0,
        help=(
            "maximum growth of the daemon's RSS from baseline to the end, in "
            "MB of 10^6 bytes (default: %(default)s)"
        ),
    )

    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the random scenario mix (default: %(default)s)",
    )
    parser.add_argument(
        "--progress-seconds",
        type=positive_float,
        default=10.0,
        help="seconds between progress lines (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-server",
        default="redis-server",
        help="redis-server binary to start (default: %(default)s)",
    )
    # The child process mode; not meant to be used by hand.
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve and not args.redis_url:
        parser.error("--serve needs --redis-url")
    return args


# --- the daemon side (--serve) ------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """
    Run a raps daemon on a free loopback port and respond to stats commands
    on stdin until stdin closes.
    """
    from twisted.internet import reactor, stdio
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from redis_ajax_push.config import load_config
    from redis_ajax_push.service import RapsService

    # Without an observer Twisted buffers the first 65,536 log events, which
    # would count as growth. Access log lines are at info level and dropped.
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    config = load_config(
        listen=f"tcp:0:interface={LOOPBACK}:backlog=1024", redis_url=args.redis_url
    )
    config = dataclasses.replace(
        config,
        redis=dataclasses.replace(
            config.redis, subscriber_idle_timeout=args.idle_timeout
        ),
        watch=dataclasses.replace(
            config.watch, heartbeat_interval=args.heartbeat_interval
        ),
    )
    service = RapsService(config, reactor)
    control = DaemonControl(service, reactor)
    # Connected first: a TCP port opens, and announce() writes, inside
    # startService().
    stdio.StandardIO(control, reactor=reactor)
    service.http.listening.addCallbacks(control.announce, control.listen_failed)
    service.startService()
    reactor.run()
    return control.exit_status


class DaemonControl(LineReceiver):
    """
    Responds to "stats" and "pool" lines on stdin with one JSON line each,
    and stops the daemon when stdin closes.
    """

    delimiter = b"\n"

    def __init__(self, service: Any, reactor: Any) -> None:
        self.service = service
        self.reactor = reactor
        self.exit_status = 0
        self._stopping = False

    def announce(self, port: Any) -> None:
        self._send({"http_port": port.getHost().port})

    def listen_failed(self, failure: Failure) -> None:
        sys.stderr.write(f"cannot listen: {failure.getErrorMessage()}\n")
        self.exit_status = 1
        self._shut_down()

    def lineReceived(self, line: bytes) -> None:
        command = line.strip().decode("ascii", "replace")
        if command == "stats":
            self._send(daemon_stats(self.service, self.reactor, count_objects=True))
        elif command == "pool":
            self._send(daemon_stats(self.service, self.reactor, count_objects=False))
        else:
            self._send({"error": f"unknown command {command!r}"})

    def _send(self, document: dict[str, Any]) -> None:
        self.sendLine(json.dumps(document).encode("utf-8"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._shut_down()

    def _shut_down(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        stopping = defer.maybeDeferred(self.service.stopService)
        stopping.addBoth(lambda _: self.reactor.stop())


def daemon_stats(service: Any, reactor: Any, count_objects: bool) -> dict[str, Any]:
    """
    Collect the daemon's own figures. With C{count_objects} it runs a full
    gc.collect() and counts the live objects of C{COUNTED_TYPES}, which
    takes tens of milliseconds on a large heap.
    """
    import gc
    import os

    pool = service.redis.pool
    stats: dict[str, Any] = {
        "pool_channels": pool.channel_count,
        "pool_connections": len(pool.connections),
        "delayed_calls": len(reactor.getDelayedCalls()),
        # Minus the descriptor that listdir itself opens.
        "fds": len(os.listdir("/proc/self/fd")) - 1,
    }
    if not count_objects:
        return stats

    packages = {class_name: package for package, class_name in COUNTED_TYPES}
    counts = dict.fromkeys(packages, 0)
    # type -> class name, or None for a type that is not counted
    names: dict[type, str | None] = {}
    gc.collect()
    objects = gc.get_objects()
    for obj in objects:
        kind = type(obj)
        if kind not in names:
            package = packages.get(kind.__name__)
            module = kind.__module__
            counted = package is not None and (
                module == package or module.startswith(package + ".")
            )
            names[kind] = kind.__name__ if counted else None
        name = names[kind]
        if name is not None:
            counts[name] += 1
    stats["objects"] = counts
    stats["gc_objects"] = len(objects)
    return stats


# --- the load side: raw HTTP over non-blocking sockets ----------------------


@dataclasses.dataclass
class Response:
    """
    A complete HTTP response, its body de-chunked.
    """

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def content(self) -> bytes:
        """
        The body without the heartbeat newlines that may precede it.
        """
        return self.body.lstrip(b"\n")

    def error_code(self) -> str | None:
        try:
            document = json.loads(self.content)
        except ValueError:
            return None
        return document.get("error") if isinstance(document, dict) else None


def decode_chunked(data: bytes) -> bytes:
    """
    Decode a chunked transfer-coded body.

    @raise ValueError: when the body is malformed or ends before the last
        chunk.
    """
    body = bytearray()
    position = 0
    while True:
        line_end = data.index(b"\r\n", position)
        size = int(data[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            return bytes(body)
        if position + size + 2 > len(data):
            raise ValueError("chunked body ends inside a chunk")
        body += data[position : position + size]
        position += size + 2


def parse_response(data: bytes) -> Response:
    """
    Parse a whole HTTP/1.1 response read until the server closed.

    @raise ValueError: when the data is not a complete response.
    """
    head, separator, raw_body = data.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError(f"incomplete response head: {data[:80]!r}")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = decode_chunked(raw_body)
    else:
        body = raw_body
    return Response(status, headers, body)


class HTTPExchange:
    """
    One HTTP/1.1 request with C{Connection: close} on its own connection.

    Raw non-blocking sockets, unlike asyncio streams, leave unread bytes in
    the kernel, so L{received_nothing} can peek at them.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._received = bytearray()
        self._closed = False

    @classmethod
    async def send(cls, port: int, target: str) -> HTTPExchange:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        exchange = cls(sock)
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        try:
            await exchange._loop.sock_connect(sock, (LOOPBACK, port))
            await exchange._loop.sock_sendall(sock, request)
        except BaseException:
            exchange.close()
            raise
        return exchange

    def received_nothing(self) -> bool:
        """
        Tell whether no byte of the response has arrived yet.
        """
        if self._received:
            return False
        try:
            self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        return False

    async def _receive(self) -> bool:
        data = await self._loop.sock_recv(self._sock, 65536)
        self._received += data
        return bool(data)

    async def read_until_body(self, body_bytes: int) -> tuple[int, bytes]:
        """
        Read until the response head and C{body_bytes} bytes of the raw
        body have arrived, or the server closed. Return the status and the
        raw body bytes received so far.

        @raise ValueError: when the server closed before the head was
            complete.
        """
        while True:
            head, separator, raw_body = bytes(self._received).partition(b"\r\n\r\n")
            if separator and len(raw_body) >= body_bytes:
                break
            if not await self._receive():
                if not separator:
                    raise ValueError(
                        f"connection closed inside the head: {head[:80]!r}"
                    )
                break
        status = int(head.split(b" ", 2)[1])
        return status, raw_body

    async def read_response(self) -> Response:
        """
        Read until the server closes the connection and parse the response.

        @raise ValueError: when it is not a complete HTTP response.
        """
        while await self._receive():
            pass
        return parse_response(bytes(self._received))

    def close(self, reset: bool = False) -> None:
        """
        Close the connection: with a FIN, or with a RST when C{reset} is
        true, as a browser tab that is killed may do. Closing twice is
        harmless.
        """
        if self._closed:
            return
        self._closed = True
        if reset:
            self._sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self._sock.close()


# --- Redis side ---------------------------------------------------------------


def data_key(task_id: str) -> str:
    return DATA_PREFIX + task_id


def channel_name(task_id: str) -> str:
    return CHANNEL_PREFIX + task_id


class KillTracker:
    """
    Counts the kill messages published on each tracked task channel.

    A watch publishes its kill message just before it starts waiting, so
    the n-th kill on a channel means the n-th watch of that task waits.
    """

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}
        self._waiters: dict[bytes, list[tuple[int, asyncio.Future[None]]]] = {}

    def track(self, channel: str) -> None:
        self._counts[channel.encode("ascii")] = 0

    def forget(self, channel: str) -> None:
        key = channel.encode("ascii")
        self._counts.pop(key, None)
        self._waiters.pop(key, None)

    def record(self, channel: bytes) -> None:
        count = self._counts.get(channel)
        if count is None:
            return
        self._counts[channel] = count + 1
        waiting = self._waiters.get(channel, [])
        for needed, future in waiting:
            if count + 1 >= needed and not future.done():
                future.set_result(None)

    async def wait(self, channel: str, count: int) -> None:
        """
        Wait until C{count} kill messages were published on C{channel}.
        """
        key = channel.encode("ascii")
        if self._counts.get(key, 0) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append((count, future))
        await future

    async def follow(self, pubsub: Any) -> None:
        """
        Record the kill messages of a pub/sub connection that is
        pattern-subscribed to every task channel. Runs until cancelled.
        """
        async for message in pubsub.listen():
            if message["type"] == "pmessage" and b'"kill"' in message["data"]:
                self.record(message["channel"])


# --- scenarios --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScenarioKind:
    """
    One kind of watch scenario: its share of the mix, the watch requests it
    sends and the data key value it needs before it starts.
    """

    name: str
    weight: float
    watches: int
    preset: bytes | None


SCENARIO_KINDS = [
    ScenarioKind("abandon_early", 1.0, 1, RUNNING),
    ScenarioKind("abandon_waiting", 2.0, 1, RUNNING),
    ScenarioKind("abandon_after_heartbeat", 1.0, 1, RUNNING),
    ScenarioKind("done", 2.0, 1, RUNNING),
    ScenarioKind("update", 2.0, 1, RUNNING),
    ScenarioKind("killed", 1.0, 2, RUNNING),
    ScenarioKind("done_at_once", 0.5, 1, DONE),
    ScenarioKind("missing", 0.5, 1, None),
]

# Requests that are not watches: (label, target template, expected status,
# expected error code or None for the task's data).
POLL_KINDS = [
    ("poll", "/task/{task}", 200, None),
    ("poll_missing", "/task/{task}_missing", 404, "not_found"),
    ("poll_invalid_id", "/task/{task}-x", 400, "invalid_task_id"),
    ("watch_invalid_id", "/task/{task}-x?watch", 400, "invalid_task_id"),
    ("invalid_mode", "/task/{task}?nonsense", 400, "invalid_mode"),
]


class Driver:
    """
    Sends waves of scenarios to the daemon and records what each returned.
    """

    def __init__(
        self,
        http_port: int,
        redis: Any,
        tracker: KillTracker,
        rng: random.Random,
        request_timeout: float,
    ) -> None:
        self._port = http_port
        self._redis = redis
        self._tracker = tracker
        self._rng = rng
        self._request_timeout = request_timeout
        self._task_serial = 0
        self._runners: dict[str, Callable[[str], Awaitable[None]]] = {
            "abandon_early": self._abandon_early,
            "abandon_waiting": self._abandon_waiting,
            "abandon_after_heartbeat": self._abandon_after_heartbeat,
            "done": self._done,
            "update": self._update,
            "killed": self._killed,
            "done_at_once": self._done_at_once,
            "missing": self._missing,
        }
        self.reset_counts()

    def reset_counts(self) -> None:
        self.watches_sent = 0
        self.other_requests = 0
        self.results: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.problem_count = 0

    def _new_task_id(self) -> str:
        self._task_serial += 1
        return f"soak{self._task_serial}"

    def _plan_wave(self, watch_count: int) -> list[tuple[ScenarioKind, str]]:
        plan = []
        remaining = watch_count
        while remaining > 0:
            fitting = [kind for kind in SCENARIO_KINDS if kind.watches <= remaining]
            weights = [kind.weight for kind in fitting]
            kind = self._rng.choices(fitting, weights)[0]
            plan.append((kind, self._new_task_id()))
            remaining -= kind.watches
        return plan

    async def run_wave(self, watch_count: int) -> None:
        """
        Run scenarios sending C{watch_count} watches, all at once, plus one
        other request per ten watches, and wait until all have ended.
        """
        plan = self._plan_wave(watch_count)
        polls = [
            (self._rng.choice(POLL_KINDS), self._new_task_id())
            for _ in range(max(1, watch_count // 10))
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for kind, task in plan:
                if kind.preset is not None:
                    pipe.set(data_key(task), kind.preset)
            for _, task in polls:
                pipe.set(data_key(task), RUNNING)
            await pipe.execute()

        runs = [self._bounded(kind.name, task) for kind, task in plan]
        runs += [self._bounded_poll(poll, task) for poll, task in polls]
        await asyncio.gather(*runs)
        await self._redis.delete(*[data_key(task) for _, task in plan + polls])

    async def _bounded(self, kind: str, task: str) -> None:
        channel = channel_name(task)
        self._tracker.track(channel)
        try:
            await asyncio.wait_for(self._runners[kind](task), self._request_timeout)
        except TimeoutError:
            self._problem(kind, task, f"no result within {self._request_timeout} s")
        except (OSError, ValueError) as error:
            self._problem(kind, task, f"{type(error).__name__}: {error}")
        finally:
            self._tracker.forget(channel)

    async def _bounded_poll(
        self, poll: tuple[str, str, int, str | None], task: str
    ) -> None:
        label, template, status, error = poll
        try:
            await asyncio.wait_for(
                self._poll(label, template.format(task=task), status, error),
                self._request_timeout,
            )
        except TimeoutError:
            self._problem(label, task, f"no result within {self._request_timeout} s")
        except (OSError, ValueError) as failure:
            self._problem(label, task, f"{type(failure).__name__}: {failure}")

    def _record(self, kind: str, label: str) -> None:
        self.results[f"{kind}: {label}"] += 1

    def _problem(self, kind: str, task: str, detail: str) -> None:
        self.results[f"{kind}: UNEXPECTED"] += 1
        self.problem_count += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(f"{kind} (task {task}): {detail}")

    def _check(
        self, kind: str, task: str, response: Response, status: int, content: bytes
    ) -> bool:
        if response.status == status and response.content == content:
            return True
        self._problem(
            kind,
            task,
            f"expected {status} {content!r}, got {response.status} "
            f"{response.content[:200]!r}",
        )
        return False

    async def _send_watch(self, task: str) -> HTTPExchange:
        exchange = await HTTPExchange.send(self._port, f"/task/{task}?watch")
        self.watches_sent += 1
        return exchange

    async def _publish_end(self, task: str, status: str) -> tuple[bytes, str]:
        """
        End a task's watch as a worker does: half the time with the data in
        the message, otherwise by writing the data key first. Return the
        body the watch must respond with and how it was ended.
        """
        channel = channel_name(task)
        if self._rng.random() < 0.5:
            message = json.dumps(
                {"status": status, "data": {"task": task, "progress": 100}}
            ).encode("utf-8")
            await self._redis.publish(channel, message)
            return message, "data in message"

        value = json.dumps(
            {"status": "done" if status == "done" else "running", "task": task}
        ).encode("utf-8")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(data_key(task), value)
            pipe.publish(channel, json.dumps({"status": status}).encode("utf-8"))
            await pipe.execute()
        return value, "data key read"

    async def _abandon_early(self, task: str) -> None:
        exchange = await self._send_watch(task)
        try:
            # Anywhere from before the daemon reads the request to after
            # the watch started waiting.
            await asyncio.sleep(self._rng.uniform(0.0, 0.02))
        finally:
            exchange.close(reset=self._rng.random() < 0.5)
        self._record("abandon_early", "closed")

    async def _abandon_waiting(self, task: str) -> None:
        exchange = await self._send_watch(task)
        try:
            await self._tracker.wait(channel_name(task), 1)
            before_headers = exchange.received_nothing()
        finally:
            exchange.close(reset=self._rng.random() < 0.5)
        if before_headers:
            self._record("abandon_waiting", "closed before the response headers")
        else:
            self._record("abandon_waiting", "closed after a heartbeat (client late)")

    async def _abandon_after_heartbeat(self, task: str) -> None:
        exchange = await self._send_watch(task)
        try:
            status, raw_body = await exchange.read_until_body(len(HEARTBEAT_CHUNK))
        finally:
            exchange.close(reset=self._rng.random() < 0.5)
        if status == 200 and raw_body.startswith(HEARTBEAT_CHUNK):
            self._record("abandon_after_heartbeat", "closed after the first heartbeat")
        else:
            self._problem(
                "abandon_after_heartbeat",
                task,
                f"expected 200 and a heartbeat, got {status} {raw_body[:80]!r}",
            )

    async def _done(self, task: str) -> None:
        await self._end_one("done", task, "done")

    async def _update(self, task: str) -> None:
        await self._end_one("update", task, "update")

    async def _end_one(self, kind: str, task: str, status: str) -> None:
        exchange = await self._send_watch(task)
        try:
            await self._tracker.wait(channel_name(task), 1)
            expected, ending = await self._publish_end(task, status)
            response = await exchange.read_response()
        finally:
            exchange.close()
        if self._check(kind, task, response, 200, expected):
            self._record(kind, f"200, {ending}")

    async def _killed(self, task: str) -> None:
        channel = channel_name(task)
        first = await self._send_watch(task)
        second: HTTPExchange | None = None
        second_reading: asyncio.Future[Response] | None = None
        try:
            await self._tracker.wait(channel, 1)
            second = await self._send_watch(task)
            # Normally the second watch publishes its kill and waits. When
            # the first watch's kill reaches it first, it ends at once.
            second_reading = asyncio.ensure_future(second.read_response())
            second_waiting = asyncio.ensure_future(self._tracker.wait(channel, 2))
            await asyncio.wait(
                {second_reading, second_waiting},
                return_when=asyncio.FIRST_COMPLETED,
            )
            second_waiting.cancel()
            # Redis delivers a channel's messages in publish order, so the
            # second watch's kill reaches the first watch before this.
            expected, ending = await self._publish_end(task, "done")
            killed = await first.read_response()
            answer = await second_reading
        finally:
            if second_reading is not None:
                second_reading.cancel()
            first.close()
            if second is not None:
                second.close()

        # Once a heartbeat went out the status line is 200, and only the body
        # carries the error.
        if killed.error_code() == "killed" and killed.status in (409, 200):
            self._record("killed", f"first watch {killed.status} killed")
        else:
            self._problem(
                "killed",
                task,
                f"first watch: expected 409 killed, got {killed.status} "
                f"{killed.content[:200]!r}",
            )
        if self._check("killed", task, answer, 200, expected):
            self._record("killed", f"second watch 200, {ending}")

    async def _done_at_once(self, task: str) -> None:
        exchange = await self._send_watch(task)
        try:
            response = await exchange.read_response()
        finally:
            exchange.close()
        if self._check("done_at_once", task, response, 200, DONE):
            self._record("done_at_once", "200")

    async def _missing(self, task: str) -> None:
        exchange = await self._send_watch(task)
        try:
            response = await exchange.read_response()
        finally:
            exchange.close()
        if response.status == 404 and response.error_code() == "not_found":
            self._record("missing", "404 not_found")
        else:
            self._problem("missing", task, f"expected 404, got {response.status}")

    async def _poll(
        self, label: str, target: str, status: int, error: str | None
    ) -> None:
        exchange = await HTTPExchange.send(self._port, target)
        self.other_requests += 1
        try:
            response = await exchange.read_response()
        finally:
            exchange.close()
        if error is None:
            ok = response.status == status and response.content == RUNNING
        else:
            ok = response.status == status and response.error_code() == error
        if ok:
            self._record(label, str(status))
        else:
            self._problem(
                label,
                target,
                f"expected {status}, got {response.status} {response.content[:200]!r}",
            )


# --- the daemon process and its figures -------------------------------------


class DaemonProcess:
    """
    The daemon child process: its pid, HTTP port, stats pipe and log.
    """

    def __init__(self, process: asyncio.subprocess.Process, http_port: int) -> None:
        self.process = process
        self.http_port = http_port
        self.log_lines = 0
        self._lock = asyncio.Lock()
        self._log_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, args: argparse.Namespace, redis_url: str) -> DaemonProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            "--redis-url",
            redis_url,
            "--heartbeat-interval",
            repr(args.heartbeat_interval),
            "--idle-timeout",
            repr(args.idle_timeout),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise SoakError(
                "the daemon did not report its HTTP port within 30 s"
            ) from None
        if not line:
            assert process.stderr is not None
            log = (await process.stderr.read()).decode("utf-8", "replace")
            status = await process.wait()
            raise SoakError(
                f"the daemon exited with status {status} before listening:\n{log}"
            )
        daemon = cls(process, json.loads(line)["http_port"])
        daemon._log_task = asyncio.create_task(daemon._echo_log())
        return daemon

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _echo_log(self) -> None:
        # Warnings and errors only: the child drops info-level events.
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log_lines += 1
            if self.log_lines <= MAX_ECHOED_LOG_LINES:
                text = line.decode("utf-8", "replace").rstrip()
                print(f"  daemon log: {text}", file=sys.stderr, flush=True)

    async def stats(self, count_objects: bool) -> dict[str, Any]:
        """
        Ask the daemon for its figures; see L{daemon_stats}.
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            command = b"stats\n" if count_objects else b"pool\n"
            self.process.stdin.write(command)
            await self.process.stdin.drain()
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), 60)
            except TimeoutError:
                raise SoakError(
                    "the daemon did not respond to a stats request within 60 s; "
                    "its log lines, if any, are above"
                ) from None
        if not line:
            raise SoakError(
                f"the daemon exited with status {self.process.returncode} "
                "during the soak"
            )
        document: dict[str, Any] = json.loads(line)
        return document

    def rss_kb(self) -> int:
        """
        Return VmRSS from /proc/<pid>/status, in KiB.
        """
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise SoakError(f"no VmRSS line in /proc/{self.pid}/status")

    def fd_count(self) -> int:
        return len(list(Path(f"/proc/{self.pid}/fd").iterdir()))

    async def stop(self) -> int:
        """
        Close the daemon's stdin, which stops it, and wait for it to exit;
        terminate it after 15 s. Return its exit status.
        """
        assert self.process.stdin is not None
        if self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                print("the daemon did not stop within 15 s; terminating it")
                self.process.terminate()
                try:
                    await asyncio.wait_for(self.process.wait(), 5)
                except TimeoutError:
                    self.process.kill()
                    await self.process.wait()
        if self._log_task is not None:
            await self._log_task
        return self.process.returncode or 0


@dataclasses.dataclass
class Snapshot:
    """
    The daemon's figures at one moment.
    """

    rss_kb: int
    fds: int
    redis_clients: int
    daemon_redis_clients: int
    daemon_subscribed: int
    pool_connections: int
    pool_channels: int
    delayed_calls: int
    objects: dict[str, int]
    gc_objects: int


async def take_snapshot(daemon: DaemonProcess, redis: Any) -> Snapshot:
    """
    Measure the daemon. The parent's pooled Redis connections are closed
    first, so that the total client count does not depend on how many the
    last wave used.
    """
    await redis.connection_pool.disconnect()
    stats = await daemon.stats(count_objects=True)
    clients = await redis.client_list()
    daemon_clients = [client for client in clients if not client.get("name")]
    subscribed = [
        client
        for client in daemon_clients
        if int(client.get("sub", 0)) > 0 or "P" in client.get("flags", "")
    ]
    return Snapshot(
        rss_kb=daemon.rss_kb(),
        fds=daemon.fd_count(),
        redis_clients=len(clients),
        daemon_redis_clients=len(daemon_clients),
        daemon_subscribed=len(subscribed),
        pool_connections=stats["pool_connections"],
        pool_channels=stats["pool_channels"],
        delayed_calls=stats["delayed_calls"],
        objects=stats["objects"],
        gc_objects=stats["gc_objects"],
    )


async def settle(daemon: DaemonProcess, args: argparse.Namespace) -> float:
    """
    Wait for the subscriber idle timeout, then until the pool has no channel
    and no connection left, for at most --settle-seconds. Return the
    seconds waited.
    """
    started = time.monotonic()
    await asyncio.sleep(args.idle_timeout + 0.5)
    deadline = time.monotonic() + args.settle_seconds
    while time.monotonic() < deadline:
        stats = await daemon.stats(count_objects=False)
        if stats["pool_connections"] == 0 and stats["pool_channels"] == 0:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def megabytes(kib: int) -> float:
    return kib * 1024 / 1e6


def print_table(
    start: Snapshot, baseline: Snapshot, halfway: Snapshot | None, after: Snapshot
) -> None:
    """
    Print the figures side by side with two growth columns: from the
    baseline to the end, and over the second half of the cycles, which
    allocator warm-up no longer inflates.
    """
    rows: list[tuple[str, Callable[[Snapshot], float], str]] = [
        ("daemon RSS (MB)", lambda s: megabytes(s.rss_kb), "{:.1f}"),
        ("daemon open fds", lambda s: s.fds, "{:d}"),
        ("Redis connected clients", lambda s: s.redis_clients, "{:d}"),
        ("  of them the daemon's", lambda s: s.daemon_redis_clients, "{:d}"),
        ("  of them subscribed", lambda s: s.daemon_subscribed, "{:d}"),
        ("pool subscriber connections", lambda s: s.pool_connections, "{:d}"),
        ("pool channels", lambda s: s.pool_channels, "{:d}"),
    ]
    for _, class_name in COUNTED_TYPES:
        rows.append((f"live {class_name}", _object_count(class_name), "{:d}"))
    rows.append(("gc-tracked objects", lambda s: s.gc_objects, "{:d}"))
    rows.append(("reactor delayed calls", lambda s: s.delayed_calls, "{:d}"))

    headings = ["start", "baseline", "halfway", "after", "growth", "2nd half"]
    print(f"{'':28}" + "".join(f"{heading:>10}" for heading in headings))
    for label, value, number_format in rows:
        cells = []
        for snapshot in (start, baseline, halfway, after):
            if snapshot is None:
                cells.append("-")
            else:
                cells.append(number_format.format(value(snapshot)))
        for since in (baseline, halfway):
            if since is None:
                cells.append("-")
            else:
                growth = value(after) - value(since)
                growth_format = "{:+.1f}" if isinstance(growth, float) else "{:+d}"
                cells.append(growth_format.format(growth))
        print(f"{label:28}" + "".join(f"{cell:>10}" for cell in cells))


def _object_count(class_name: str) -> Callable[[Snapshot], int]:
    return lambda snapshot: snapshot.objects.get(class_name, 0)


def verdict(
    args: argparse.Namespace,
    baseline: Snapshot,
    after: Snapshot,
    driver: Driver,
    stopped_early: bool,
    daemon_alive: bool,
) -> list[str]:
    """
    Return the failed criteria; an empty list means PASS.
    """
    failures = []
    growth_mb = megabytes(after.rss_kb - baseline.rss_kb)
    if growth_mb >= args.rss_limit_mb:
        failures.append(f"RSS grew by {growth_mb:.1f} MB, limit {args.rss_limit_mb} MB")
    checks = [
        ("open fds", after.fds, baseline.fds),
        ("Redis connected clients", after.redis_clients, baseline.redis_clients),
        (
            "Redis clients of the daemon",
            after.daemon_redis_clients,
            baseline.daemon_redis_clients,
        ),
    ]
    for label, now, before in checks:
        if now > before:
            failures.append(f"{label}: {now}, baseline {before}")
    zero_checks = [
        ("live Watch objects", after.objects.get("Watch", 0)),
        ("pool channels", after.pool_channels),
        ("pool subscriber connections", after.pool_connections),
    ]
    for label, now in zero_checks:
        if now != 0:
            failures.append(f"{label}: {now}, expected 0")
    if driver.problem_count:
        failures.append(f"{driver.problem_count} unexpected responses or timeouts")
    if stopped_early:
        failures.append(
            f"stopped by --max-seconds after {driver.watches_sent:,} of "
            f"{args.cycles:,} watch cycles"
        )
    if not daemon_alive:
        failures.append("the daemon exited during the soak")
    return failures


# --- main -------------------------------------------------------------------


def ensure_fd_limit(concurrency: int) -> None:
    """
    Raise the soft open-file limit, which the child inherits, to what
    C{concurrency} needs: two sockets per watch in the worst case in this
    process and one per watch in the daemon, plus headroom.

    @raise SoakError: when the hard limit is too low.
    """
    needed = 2 * concurrency + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SoakError(
            f"--concurrency {concurrency} needs {needed} open files but the "
            f"hard limit is {hard}: lower --concurrency or raise ulimit -Hn"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def soak(args: argparse.Namespace) -> int:
    from redis_ajax_push.testing import RedisServer

    # SIGTERM cancels the run, so that the finally clauses below stop the
    # daemon and redis-server.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    ensure_fd_limit(args.concurrency)
    redis_server = RedisServer(args.redis_server)
    redis_server.start()
    print(f"redis-server {redis_server.port} on {LOOPBACK} started")
    try:
        daemon = await DaemonProcess.start(args, redis_server.url)
        print(f"daemon pid {daemon.pid} serving on {LOOPBACK}:{daemon.http_port}")
        try:
            return await drive(args, redis_server, daemon)
        finally:
            status = await daemon.stop()
            print(
                f"daemon stopped with status {status}; it logged "
                f"{daemon.log_lines} warning or error lines"
            )
    finally:
        redis_server.close()


async def drive(
    args: argparse.Namespace, redis_server: Any, daemon: DaemonProcess
) -> int:
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool(
        host=redis_server.host,
        port=redis_server.port,
        client_name=PARENT_CLIENT_NAME,
        max_connections=16,
        timeout=args.request_timeout,
    )
    publisher = aioredis.Redis(connection_pool=pool)
    listener = aioredis.Redis(
        host=redis_server.host, port=redis_server.port, client_name=PARENT_CLIENT_NAME
    )
    pubsub = listener.pubsub()
    await pubsub.psubscribe(CHANNEL_PREFIX + "*")
    tracker = KillTracker()
    follower = asyncio.create_task(tracker.follow(pubsub))
    try:
        return await run_waves(args, daemon, publisher, tracker, follower)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await pubsub.aclose()
        await listener.aclose()
        await publisher.aclose()
        await pool.disconnect()


async def run_waves(
    args: argparse.Namespace,
    daemon: DaemonProcess,
    publisher: Any,
    tracker: KillTracker,
    follower: asyncio.Task[None],
) -> int:
    driver = Driver(
        daemon.http_port,
        publisher,
        tracker,
        random.Random(args.seed),
        args.request_timeout,
    )
    start = await take_snapshot(daemon, publisher)

    warmup_started = time.monotonic()
    for _ in range(args.warmup_waves):
        await driver.run_wave(args.concurrency)
    warmup_seconds = time.monotonic() - warmup_started
    print(
        f"warm-up: {driver.watches_sent:,} watch cycles in {warmup_seconds:.1f} s, "
        f"{driver.problem_count} unexpected"
    )
    await settle(daemon, args)
    baseline = await take_snapshot(daemon, publisher)
    print(
        f"baseline: RSS {megabytes(baseline.rss_kb):.1f} MB, "
        f"{baseline.fds} fds, {baseline.redis_clients} Redis clients"
    )
    driver.reset_counts()

    print(
        f"soak: {args.cycles:,} watch cycles in waves of {args.concurrency}, "
        f"heartbeat {args.heartbeat_interval} s, idle timeout {args.idle_timeout} s"
    )
    started = time.monotonic()
    last_progress = started
    stopped_early = False
    halfway: Snapshot | None = None
    while driver.watches_sent < args.cycles:
        if time.monotonic() - started > args.max_seconds:
            stopped_early = True
            break
        if follower.done():
            raise SoakError(f"the kill message reader stopped: {follower!r}")
        await driver.run_wave(min(args.concurrency, args.cycles - driver.watches_sent))
        if halfway is None and driver.watches_sent >= args.cycles / 2:
            await settle(daemon, args)
            halfway = await take_snapshot(daemon, publisher)
        now = time.monotonic()
        if now - last_progress >= args.progress_seconds:
            last_progress = now
            elapsed = now - started
            print(
                f"[{elapsed:7.1f} s] {driver.watches_sent:>9,} watch cycles, "
                f"{driver.watches_sent / elapsed:5.0f}/s, "
                f"daemon RSS {megabytes(daemon.rss_kb()):6.1f} MB, "
                f"{daemon.fd_count()} fds, {driver.problem_count} unexpected",
                flush=True,
            )
    load_seconds = time.monotonic() - started
    print(
        f"load done: {driver.watches_sent:,} watch cycles and "
        f"{driver.other_requests:,} other requests in {load_seconds:.1f} s "
        f"({driver.watches_sent / load_seconds:.0f} watches/s)"
    )

    settled = await settle(daemon, args)
    after = await take_snapshot(daemon, publisher)
    print(f"settled {settled:.1f} s after the last wave (idle timeout included)")
    print()
    print_table(start, baseline, halfway, after)
    print()
    print("results:")
    for key in sorted(driver.results):
        print(f"  {key:60} {driver.results[key]:>8,}")
    for problem in driver.problems:
        print(f"  unexpected: {problem}")
    if driver.problem_count > len(driver.problems):
        print(f"  ... and {driver.problem_count - len(driver.problems)} more")
    print()

    failures = verdict(
        args,
        baseline,
        after,
        driver,
        stopped_early,
        daemon.process.returncode is None,
    )
    growth = megabytes(after.rss_kb - baseline.rss_kb)
    if failures:
        print("FAIL: " + "; ".join(failures))
        return EXIT_FAIL
    print(
        f"PASS: after {driver.watches_sent:,} watch cycles RSS grew by "
        f"{growth:.1f} MB (limit {args.rss_limit_mb} MB); open fds, Redis "
        "clients and the subscriber pool are back to their baseline, and no "
        "Watch object is left"
    )
    return EXIT_PASS


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    try:
        return asyncio.run(soak(args))
    except SoakError as error:
        print(f"soak: {error}", file=sys.stderr)
        return EXIT_ERROR
    except asyncio.CancelledError:
        print("soak: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
