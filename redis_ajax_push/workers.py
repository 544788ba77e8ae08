"""
The worker processes of C{[http] workers}, seen from the parent process.

L{WorkerSupervisor} starts each worker process on the parent's listening
socket, starts it again after it dies, and stops it when the parent stops.
A worker process runs L{redis_ajax_push.worker_process}.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

# The listening socket's file descriptor in a worker process.
WORKER_SOCKET_FD = 3

# Delay in seconds before a worker process that died starts again. It
# doubles, up to MAX_RESTART_DELAY, while the process dies within STABLE_RUN
# seconds of each start, and goes back to RESTART_DELAY after a longer run.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_RUN = 30.0

# Seconds that a stopping worker process gets beyond watch.shutdown_grace
# to close its Redis connections and exit, before it gets SIGKILL.
STOP_MARGIN = 5.0
# Seconds to wait for the exit of a worker process after SIGKILL.
KILL_WAIT = 2.0


def describe_exit(reason: Failure) -> str:
    """
    Return how a process ended, from the failure of C{processEnded}: its
    exit status or the signal that killed it.
    """
    ended = reason.value
    signal_number = getattr(ended, "signal", None)
    if isinstance(ended, ProcessTerminated) and signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {signal_number} ({name})"
    return f"exit status {getattr(ended, 'exitCode', None)}"


class _WorkerProtocol(ProcessProtocol):
    """
    Reports the end of one worker process. The process has no pipes to
    the parent: it writes its log to the parent's stdout and stderr.
    """

    def __init__(self, on_ended: Callable[[Failure], None]) -> None:
        self._on_ended = on_ended

    def processEnded(self, reason: Failure) -> None:
        self._on_ended(reason)


class _Slot:
    """
    One worker process number: the process running under it, if any, and
    its restart state.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: IProcessTransport | None = None
        self.pid: int | None = None
        self.started = 0.0
        self.restart_delay = 0.0
        self.restart: IDelayedCall | None = None


class WorkerSupervisor(Service):
    """
    Runs C{count} worker processes, numbered from 1, that serve the
    listening port that C{listening} fires with.

    Each worker process runs C{python -m redis_ajax_push.worker_process}
    with C{options}, the parent's config file and command line overrides,
    in the directory that was current when this supervisor was made. It
    gets the listening socket as file descriptor L{WORKER_SOCKET_FD}, and
    the parent's stdin, stdout and stderr.

    Stopping sends SIGTERM to every worker process and fires once all have
    exited. A worker process still running after C{shutdown_grace} plus
    L{STOP_MARGIN} seconds gets SIGKILL.
    """

    log = Logger()

    def __init__(
        self,
        count: int,
        options: Sequence[str],
        listening: defer.Deferred[IListeningPort],
        shutdown_grace: float,
        reactor: Any,
        executable: str = sys.executable,
    ) -> None:
        self._slots = [_Slot(number) for number in range(1, count + 1)]
        self._options = list(options)
        self._listening = listening
        self._stop_timeout = shutdown_grace + STOP_MARGIN
        self._reactor = reactor
        self._executable = executable
        # Taken now because twistd changes to its --rundir after building
        # the services: a worker process must find the config file and the
        # paths in it as this process did.
        self._directory = os.getcwd()
        self._socket_fd: int | None = None
        self._stopped: defer.Deferred[None] | None = None
        self._stop_calls: list[IDelayedCall] = []

    def pids(self) -> list[int]:
        """
        Return the process ids of the worker processes running now.
        """
        return [slot.pid for slot in self._slots if slot.pid is not None]

    def startService(self) -> None:
        super().startService()
        self._listening.addCallback(self._start_all)

    def _start_all(self, port: IListeningPort) -> IListeningPort:
        self._socket_fd = port.fileno()  # type: ignore[attr-defined]
        if self.running:
            for slot in self._slots:
                self._spawn(slot)
        return port

    def _spawn(self, slot: _Slot) -> None:
        slot.restart = None
        if not self.running or self._socket_fd is None:
            return
        # NOTE: each start reads the config file again, so a worker process
        # started after an edit runs with the edited config, or exits at
        # once when the file has become invalid.
        arguments = [
            self._executable,
            "-m",
            "redis_ajax_push.worker_process",
            "--worker",
            str(slot.number),
            "--socket-fd",
            str(WORKER_SOCKET_FD),
            "--parent-pid",
            str(os.getpid()),
            *self._options,
        ]

        protocol = _WorkerProtocol(lambda reason: self._ended(slot, reason))
        try:
            # NOTE: the worker processes write their log to the parent's
            # stdout and stderr. A daemonized twistd has /dev/null there, so
            # their lines are lost unless twistd runs with -n.
            process = self._reactor.spawnProcess(
                protocol,
                self._executable,
                arguments,
                env=dict(os.environ),
                path=self._directory,
                childFDs={0: 0, 1: 1, 2: 2, WORKER_SOCKET_FD: self._socket_fd},
            )
        except OSError as error:
            self.log.error(
                "Cannot start worker process {number}: {error}; trying again "
                "in {delay:g} s",
                number=slot.number,
                error=error,
                delay=self._schedule_restart(slot),
            )
            return

        slot.process = process
        slot.pid = process.pid
        slot.started = self._reactor.seconds()
        self.log.info(
            "Started worker process {number} (pid {pid})",
            number=slot.number,
            pid=slot.pid,
        )

    def _ended(self, slot: _Slot, reason: Failure) -> None:
        pid, slot.pid, slot.process = slot.pid, None, None
        outcome = describe_exit(reason)
        if self.running:
            self.log.error(
                "Worker process {number} (pid {pid}) exited unexpectedly: "
                "{outcome}; starting it again in {delay:g} s",
                number=slot.number,
                pid=pid,
                outcome=outcome,
                delay=self._schedule_restart(slot),
            )
            return
        self.log.info(
            "Worker process {number} (pid {pid}) stopped: {outcome}",
            number=slot.number,
            pid=pid,
            outcome=outcome,
        )
        if self._stopped is not None and not self.pids():
            self._finish_stop()

    def _schedule_restart(self, slot: _Slot) -> float:
        """
        Start C{slot}'s process again after a delay, and return the delay.
        """
        ran = self._reactor.seconds() - slot.started
        if slot.restart_delay == 0.0 or ran >= STABLE_RUN:
            delay = RESTART_DELAY
        else:
            delay = min(slot.restart_delay * 2, MAX_RESTART_DELAY)
        slot.restart_delay = delay
        slot.restart = self._reactor.callLater(delay, self._spawn, slot)
        return delay

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for slot in self._slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
        running = [slot for slot in self._slots if slot.process is not None]
        if not running:
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        self.log.info("Stopping {count} worker processes", count=len(running))
        for slot in running:
            self._signal(slot, "TERM")
        self._stop_calls.append(
            self._reactor.callLater(self._stop_timeout, self._kill_remaining)
        )
        return self._stopped

    def _signal(self, slot: _Slot, name: str) -> None:
        if slot.process is None:
            return
        try:
            slot.process.signalProcess(name)
        except ProcessExitedAlready:
            # It exited and processEnded is on its way.
            pass

    def _kill_remaining(self) -> None:
        for slot in self._slots:
            if slot.process is None:
                continue
            self.log.error(
                "Worker process {number} (pid {pid}) did not stop within "
                "{timeout:g} s; sending SIGKILL",
                number=slot.number,
                pid=slot.pid,
                timeout=self._stop_timeout,
            )
            self._signal(slot, "KILL")
        self._stop_calls.append(self._reactor.callLater(KILL_WAIT, self._give_up))

    def _give_up(self) -> None:
        self.log.error(
            "Worker processes {pids} still run {seconds:g} s after SIGKILL; "
            "stopping without them",
            pids=self.pids(),
            seconds=KILL_WAIT,
        )
        self._finish_stop()

    def _finish_stop(self) -> None:
        for call in self._stop_calls:
            if call.active():
                call.cancel()
        self._stop_calls = []
        stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)
