"""
Helpers for tests that need a real Redis: a throwaway C{redis-server} on a
free loopback port, which a test can stop and start again, and in-process
daemons bound to it.

L{RapsTrialMixin} sets both up for C{twisted.trial} tests. For pytest, the
fixtures of L{redis_ajax_push.pytest_plugin} do the same.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from redis_ajax_push.config import Config, load_config
from redis_ajax_push.publisher import TaskPublisher
from redis_ajax_push.service import RapsService


class RedisServerError(RuntimeError):
    """
    The C{redis-server} binary is missing or the server did not start.
    """


def free_port(host: str = "127.0.0.1") -> int:
    """
    Return a TCP port on C{host} that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """
    A private C{redis-server} on 127.0.0.1 with persistence off.

    The port stays the same across L{stop} and L{start}, so clients can
    reconnect to a restarted server.
    """

    def __init__(self, binary: str = "redis-server", port: int | None = None) -> None:
        found = shutil.which(binary)
        if found is None:
            raise RedisServerError(
                f"{binary} not found; install it (Debian: apt-get install redis-server)"
            )
        self.binary = found
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="raps-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """
        Start the server and wait until it accepts connections.

        @raise RedisServerError: when it exits or does not answer in time.
        """
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._workdir),
            "--maxclients", "10000",
        ]  # fmt: skip
        log_file = (self._workdir / "redis.log").open("ab")
        self._process = subprocess.Popen(command, stdout=log_file, stderr=log_file)
        log_file.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self._workdir / "redis.log").read_text(errors="replace")
                raise RedisServerError(f"redis-server exited at start:\n{log}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """
        Stop the server, if it runs, and wait for it to exit.
        """
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """
        Stop the server and remove its working directory.
        """
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)


def daemon_config(redis_url: str, **sections: dict[str, Any]) -> Config:
    """
    Build a config for a test daemon: HTTP on 127.0.0.1 and a port that the
    system picks, Redis at C{redis_url}, and the given section fields
    replaced, as in C{daemon_config(url, watch={"heartbeat_interval": 0})}.
    """
    config = load_config(listen="tcp:0:interface=127.0.0.1", redis_url=redis_url)
    for name, fields in sections.items():
        section = dataclasses.replace(getattr(config, name), **fields)
        config = dataclasses.replace(config, **{name: section})
    return config


class RunningDaemon:
    """
    An in-process raps daemon that listens on 127.0.0.1.
    """

    def __init__(self, service: RapsService, base_url: str) -> None:
        self.service = service
        self.base_url = base_url

    def url(self, path: str) -> str:
        """
        Return the full URL of C{path}, as in C{daemon.url("/task/t1")}.
        """
        return self.base_url + path

    def stop(self) -> defer.Deferred[None]:
        """
        Stop the daemon; the Deferred fires once its port and Redis
        connections are closed.
        """
        return self.service.stopService()


async def start_daemon(config: Config, reactor: Any = None) -> RunningDaemon:
    """
    Start an in-process daemon with C{config} on the running reactor and
    return it once it listens.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    service = RapsService(config, reactor)
    service.startService()
    port = await service.http.listening
    address = cast(IPv4Address, port.getHost())
    return RunningDaemon(service, f"http://127.0.0.1:{address.port}")


def flush_redis(server: RedisServer) -> None:
    """
    Delete every key of every database of C{server}, starting it first when
    it was stopped.
    """
    if not server.running:
        server.start()
    with socket.create_connection((server.host, server.port), timeout=5) as conn:
        conn.sendall(b"FLUSHALL\r\n")
        reply = conn.recv(64)
    if not reply.startswith(b"+OK"):
        raise RedisServerError(f"FLUSHALL failed: {reply!r}")


if TYPE_CHECKING:
    _TrialBase = unittest.TestCase
else:
    _TrialBase = object


class RapsTrialMixin(_TrialBase):
    """
    Gives each test of a C{twisted.trial} TestCase a private redis-server
    and an in-process daemon bound to it, both stopped after the test.

    Mix it in before the TestCase class; a subclass that overrides C{setUp}
    must return the Deferred of C{super().setUp()}. Set
    C{raps_config_sections} to change the daemon's config, as in
    C{{"watch": {"heartbeat_interval": 0}}}. The test can use:

      - C{self.raps_redis}: the L{RedisServer};
      - C{self.raps_daemon}: the L{RunningDaemon};
      - C{self.raps_publisher}: a L{TaskPublisher} bound to that Redis
        (needs redis-py);
      - C{self.raps_url(path)}: the daemon's URL of C{path}.
    """

    raps_config_sections: dict[str, dict[str, Any]] = {}

    raps_redis: RedisServer
    raps_daemon: RunningDaemon
    raps_publisher: TaskPublisher

    # trial waits for a Deferred returned by setUp; the stubs of the
    # standard library's TestCase declare None.
    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        import redis

        self.raps_redis = RedisServer()
        self.raps_redis.start()
        self.addCleanup(self.raps_redis.close)

        client = redis.Redis(host=self.raps_redis.host, port=self.raps_redis.port)
        self.addCleanup(client.close)
        self.raps_publisher = TaskPublisher(client)

        config = daemon_config(self.raps_redis.url, **self.raps_config_sections)
        starting = defer.Deferred.fromCoroutine(start_daemon(config))
        return starting.addCallback(self._raps_started)

    def _raps_started(self, daemon: RunningDaemon) -> None:
        self.raps_daemon = daemon
        # Cleanups run last in, first out: the daemon stops before Redis.
        self.addCleanup(daemon.stop)

    def raps_url(self, path: str) -> str:
        """
        Return the daemon's URL of C{path}, as in C{self.raps_url("/task/t1")}.
        """
        return self.raps_daemon.url(path)
