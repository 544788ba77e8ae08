"""
Helpers for tests that need a real Redis: a throwaway C{redis-server} on a
free loopback port, which a test can stop and start again.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


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
