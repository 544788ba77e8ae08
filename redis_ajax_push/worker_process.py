"""
One worker process of C{[http] workers}: C{python -m
redis_ajax_push.worker_process}, which the parent's
L{redis_ajax_push.workers.WorkerSupervisor} runs with the parent's listening
socket as file descriptor 3.

It runs a whole daemon, with its own Redis connections, subscriber pool and
limits, on that socket, but no admin listener. It logs to stdout, with the
field C{worker} in every event. SIGTERM stops it as it stops C{twistd raps}.
It ignores SIGINT, so that Ctrl-C in a terminal stops only the parent, which
then stops it. It also stops by itself once its parent process has exited.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import task
from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage

from redis_ajax_push.logs import worker_log_observer
from redis_ajax_push.service import RapsService
from redis_ajax_push.tap import Options, tune_garbage_collector

# Seconds between two checks that the parent process still runs.
PARENT_CHECK_INTERVAL = 1.0


class WorkerOptions(Options):
    """
    Command line of a worker process: the options of C{twistd raps}, which
    the parent passes on, and three that the parent adds. C{usage.Options}
    collects C{optParameters} from the base classes too.
    """

    optParameters: list[list[Any]] = [
        ["worker", None, None, "Number of this worker process, 1 or more.", int],
        [
            "socket-fd",
            None,
            None,
            "File descriptor of the listening socket inherited from the parent.",
            int,
        ],
        [
            "parent-pid",
            None,
            None,
            "Process id of the parent; this process stops when the parent exits.",
            int,
        ],
    ]

    def postOptions(self) -> None:
        for name in ("worker", "socket-fd", "parent-pid"):
            if self[name] is None:
                raise usage.UsageError(f"--{name} is required")
        super().postOptions()


class ParentWatch(Service):
    """
    Calls C{stop} once this process's parent is no longer C{parent_pid},
    which happens when the parent exits, even when it is killed with
    SIGKILL: the orphan gets another parent.
    """

    log = Logger()

    def __init__(self, parent_pid: int, stop: Callable[[], None], reactor: Any) -> None:
        self._parent_pid = parent_pid
        self._stop = stop
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(PARENT_CHECK_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() == self._parent_pid:
            return
        self.log.warn(
            "The parent process {pid} has exited; stopping", pid=self._parent_pid
        )
        self._loop.stop()
        self._stop()


class _StopOnce:
    """
    Stops the reactor on the first call and does nothing on later ones, so
    that a SIGTERM during a stop does not raise ReactorNotRunning.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._called = False

    def __call__(self) -> None:
        if self._called:
            return
        self._called = True
        self._reactor.stop()


def main(arguments: list[str] | None = None) -> None:
    """
    Run one worker process until SIGTERM or the exit of its parent.

    @raise SystemExit: with a one-line message for invalid options, an
        invalid config, or a socket that cannot be served.
    """
    options = WorkerOptions()
    try:
        options.parseOptions(sys.argv[1:] if arguments is None else arguments)
    except usage.UsageError as error:
        raise SystemExit(f"raps worker process: {error}") from None

    from twisted.internet import reactor as default_reactor

    reactor: Any = default_reactor
    stop = _StopOnce(reactor)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda number, frame: reactor.callFromThread(stop))
    # Made before logging begins, which replaces sys.stdout.
    observer = worker_log_observer(
        options["worker"], options.config.log.format, sys.stdout
    )

    daemon = RapsService(options.config, reactor, inherited_socket=options["socket-fd"])
    # Started before the reactor runs, so that a socket that cannot be
    # served stops the process with one line on stderr.
    daemon.startService()
    globalLogBeginner.beginLoggingTo([observer])
    watch = ParentWatch(options["parent-pid"], stop, reactor)
    watch.startService()
    reactor.addSystemEventTrigger("before", "shutdown", watch.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
    tune_garbage_collector()
    # Twisted's own handlers stay off: its SIGINT handler would stop the
    # reactor, and a second SIGTERM would raise ReactorNotRunning.
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    # Runs main() from the module imported under its own name, so that the
    # log namespaces of its classes do not read __main__.
    from redis_ajax_push.worker_process import main as imported_main

    imported_main()
