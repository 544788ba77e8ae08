"""
WorkerSupervisor on a fake reactor: the command and file descriptors of the
worker processes, the restart delays, and the stop with its timeout. The
real processes are tested in tests/test_workers.py.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from redis_ajax_push.config import load_config
from redis_ajax_push.service import RapsService
from redis_ajax_push.tap import Options
from redis_ajax_push.workers import (
    KILL_WAIT,
    MAX_RESTART_DELAY,
    RESTART_DELAY,
    STABLE_RUN,
    STOP_MARGIN,
    WorkerSupervisor,
    describe_exit,
)

SHUTDOWN_GRACE = 5.0
OPTIONS = ["--config", "raps.toml", "--redis", "redis://127.0.0.1:6390/0"]


class FakeProcess:
    """
    A spawned process that records the signals sent to it.
    """

    def __init__(self, protocol, pid, arguments, child_fds, path):
        self.protocol = protocol
        self.pid = pid
        self.arguments = arguments
        self.child_fds = child_fds
        self.path = path
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)

    def end(self, reason):
        """
        Report the end of the process to its protocol.
        """
        self.protocol.processEnded(Failure(reason))


class ProcessClock(Clock):
    """
    A Clock that also records spawnProcess calls instead of running them.
    """

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env, path, **keywords):
        pid = 1000 + len(self.spawned)
        process = FakeProcess(protocol, pid, args, keywords["childFDs"], path)
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process


class FakePort:
    """
    A listening port with a file descriptor number.
    """

    def fileno(self):
        return 7


def start_supervisor(count=2, options=OPTIONS):
    """
    Start a WorkerSupervisor of C{count} worker processes on a ProcessClock
    whose port is listening already; return both and the listening Deferred.
    """
    reactor = ProcessClock()
    port = FakePort()
    listening = defer.succeed(port)
    supervisor = WorkerSupervisor(
        count, options, listening, SHUTDOWN_GRACE, reactor, executable="/venv/python"
    )
    supervisor.startService()
    return supervisor, reactor, listening


def test_spawns_with_inherited_socket():
    """
    Each worker process runs redis_ajax_push.worker_process with its number,
    the socket as file descriptor 3, this process's pid and the options,
    inherits stdin, stdout and stderr, and starts in the current directory.
    """
    supervisor, reactor, listening = start_supervisor(count=2)
    results = []
    listening.addCallback(results.append)

    first, second = reactor.spawned

    assert len(reactor.spawned) == 2
    assert first.arguments == [
        "/venv/python",
        "-m",
        "redis_ajax_push.worker_process",
        "--worker",
        "1",
        "--socket-fd",
        "3",
        "--parent-pid",
        str(os.getpid()),
        *OPTIONS,
    ]
    assert second.arguments[3:5] == ["--worker", "2"]
    assert first.child_fds == {0: 0, 1: 1, 2: 2, 3: 7}
    assert first.path == os.getcwd()
    assert supervisor.pids() == [1000, 1001]
    assert isinstance(results[0], FakePort)


def test_restart_delay_doubles_and_resets():
    """
    A worker process that dies soon after each start is started again after
    1, 2, 4, ... seconds, at most MAX_RESTART_DELAY; after a run of
    STABLE_RUN seconds the delay is RESTART_DELAY again.
    """
    supervisor, reactor, _ = start_supervisor(count=1)
    killed = ProcessTerminated(signal=9)
    delays = []
    for _ in range(7):
        reactor.spawned[-1].end(killed)
        spawned_before = len(reactor.spawned)
        waited = 0.0
        while len(reactor.spawned) == spawned_before:
            reactor.advance(0.5)
            waited += 0.5
        delays.append(waited)

    reactor.advance(STABLE_RUN)
    reactor.spawned[-1].end(killed)
    reactor.advance(RESTART_DELAY - 0.5)
    spawned_before_stable_restart = len(reactor.spawned)
    reactor.advance(0.5)

    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    assert len(reactor.spawned) == spawned_before_stable_restart + 1
    assert supervisor.pids() == [reactor.spawned[-1].pid]


def test_stop_waits_for_exit():
    """
    Stopping sends SIGTERM to each worker process and fires once every one
    has exited; a pending restart is cancelled.
    """
    supervisor, reactor, _ = start_supervisor(count=2)
    first, second = reactor.spawned
    first.end(ProcessTerminated(signal=9))

    stopped = supervisor.stopService()
    results = []
    stopped.addBoth(results.append)
    second_signals = list(second.signals)
    second.end(ProcessDone(0))
    reactor.advance(MAX_RESTART_DELAY)

    assert first.signals == []
    assert second_signals == ["TERM"]
    assert results == [None]
    assert len(reactor.spawned) == 2


def test_stop_kills_after_timeout():
    """
    A worker process that has not exited shutdown_grace + STOP_MARGIN
    seconds after SIGTERM gets SIGKILL, and the stop fires at the latest
    KILL_WAIT seconds later.
    """
    supervisor, reactor, _ = start_supervisor(count=1)
    (process,) = reactor.spawned

    stopped = supervisor.stopService()
    results = []
    stopped.addBoth(results.append)
    reactor.advance(SHUTDOWN_GRACE + STOP_MARGIN - 0.1)
    signals_before_timeout = list(process.signals)
    reactor.advance(0.1)
    signals_after_timeout = list(process.signals)
    reactor.advance(KILL_WAIT - 0.1)
    results_before_giving_up = list(results)
    reactor.advance(0.1)

    assert signals_before_timeout == ["TERM"]
    assert signals_after_timeout == ["TERM", "KILL"]
    assert results_before_giving_up == []
    assert results == [None]


def test_stop_without_processes():
    """
    Stopping before the port listens fires at once and starts nothing.
    """
    reactor = ProcessClock()
    supervisor = WorkerSupervisor(1, OPTIONS, defer.Deferred(), SHUTDOWN_GRACE, reactor)
    supervisor.startService()

    stopped = supervisor.stopService()
    results = []
    stopped.addBoth(results.append)

    assert results == [None]
    assert reactor.spawned == []


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        pytest.param(ProcessDone(0), "exit status 0", id="done"),
        pytest.param(ProcessTerminated(exitCode=1), "exit status 1", id="status"),
        pytest.param(
            ProcessTerminated(signal=9), "killed by signal 9 (SIGKILL)", id="signal"
        ),
    ],
)
def test_describe_exit(reason, text):
    """
    describe_exit gives the exit status, or the signal number and name.
    """
    assert describe_exit(Failure(reason)) == text


def test_options_passed_to_workers(tmp_path):
    """
    Options.worker_options lists --config, --listen and --redis as given,
    and leaves out the ones not given.
    """
    path = tmp_path / "raps.toml"
    path.write_text("")
    options = Options()
    options.parseOptions(["--config", str(path), "--listen", "tcp:0"])

    assert options.worker_options() == ["--config", str(path), "--listen", "tcp:0"]


def test_service_runs_supervisor_for_workers():
    """
    With [http] workers = 3, RapsService runs a WorkerSupervisor; without
    worker_options it raises ValueError instead of starting worker
    processes with the built-in config.
    """
    config = load_config(listen="tcp:0:interface=127.0.0.1")
    config = replace(config, http=replace(config.http, workers=3))

    service = RapsService(config, Clock(), worker_options=OPTIONS)

    assert isinstance(service.workers, WorkerSupervisor)
    assert service.workers.parent is service
    with pytest.raises(ValueError, match="worker_options"):
        RapsService(config, Clock())
