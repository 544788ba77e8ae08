"""
The C{twistd raps} command: its options and the service tree it runs.
"""

from __future__ import annotations

import gc
import platform
import signal
from typing import Any

from twisted.application.service import IService, Service
from twisted.python import usage

from redis_ajax_push.config import Config, ConfigError, load_config
from redis_ajax_push.service import RapsService


class Options(usage.Options):
    """
    Command line options of C{twistd raps}.
    """

    optParameters = [
        [
            "config",
            "c",
            None,
            "Path of the TOML config file (default: built-in defaults).",
        ],
        [
            "listen",
            "l",
            None,
            "Twisted server endpoint string to serve HTTP on, overriding "
            "[http] listen (example: tcp:8888:interface=127.0.0.1).",
        ],
        [
            "redis",
            "r",
            None,
            "Redis URL, overriding [redis] url (example: redis://127.0.0.1:6379/0).",
        ],
    ]

    config: Config

    def worker_options(self) -> list[str]:
        """
        Return the options given for the config file and the overrides, to
        pass on to the worker processes of C{[http] workers}.
        """
        arguments = []
        for name in ("config", "listen", "redis"):
            if self[name] is not None:
                arguments.extend([f"--{name}", self[name]])
        return arguments

    def postOptions(self) -> None:
        try:
            self.config = load_config(self["config"], self["listen"], self["redis"])
        except ConfigError as error:
            # One line and no usage text: the options were fine, the values
            # were not.
            raise SystemExit(f"raps: {error}") from None
        self._choose_log_observer()

    def _choose_log_observer(self) -> None:
        """
        Choose twistd's log observer, unless C{twistd --logger} chose one:
        L{json_log_observer} for C{[log] format = "json"}, and for text
        L{text_log_observer} when twistd would write to stdout (C{-n} with
        no C{--logfile}, as under systemd); with a log file twistd's own
        observer, which rotates it, stays.

        twistd builds its logger from its own options after the plugin's
        options are parsed, so setting its C{logger} option here is enough.
        """
        twistd_options = getattr(self, "parent", None)
        if twistd_options is None or twistd_options.get("logger") is not None:
            return
        if self.config.log.format == "json":
            twistd_options["logger"] = "redis_ajax_push.logs.json_log_observer"
            return
        to_stdout = twistd_options.get("logfile") in (None, "-")
        if twistd_options.get("nodaemon") and to_stdout:
            if not twistd_options.get("syslog"):
                twistd_options["logger"] = (
                    "redis_ajax_push.log_output.text_log_observer"
                )


class _CleanExitOnSIGTERM(Service):
    """
    Makes SIGTERM stop the reactor like a plain C{reactor.stop()}.

    Twisted's own handler makes twistd kill itself with the signal once the
    shutdown is over, so the exit status is 143 even after a clean stop;
    systemd and scripts expect 0.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        # The reactor installs its own handlers when it starts running, after
        # twistd has started the services.
        self._reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reactor.stop)


# CPython's garbage collector thresholds for the daemon. With the defaults
# (700, 10, 10), a daemon holding 10,000 watches spent about half of each
# watch's setup and of a burst of done messages in collections. Full
# collections over its hundreds of thousands of live objects stalled a
# paced load for up to 0.7 s. Collecting the youngest generation every
# 100,000 allocations instead of 700 makes collections rare. A burst of
# 10,000 done messages went from 166 to 90 us of CPU per watch, and the
# paced p99 from 679 ms to under 2 ms (docs/performance.md). The cost is
# cyclic garbage living longer: a few MB at most.
GC_THRESHOLDS = (100_000, 20, 10)


def tune_garbage_collector() -> None:
    """
    Set L{GC_THRESHOLDS} and move every object alive now (modules, config,
    the service tree) out of the collector's sight, so that no collection
    walks them again. Only CPython has these knobs; PyPy's collector needs
    neither.
    """
    if platform.python_implementation() != "CPython":
        return
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service tree of one daemon from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    daemon = RapsService(
        options.config, reactor, worker_options=options.worker_options()
    )
    _CleanExitOnSIGTERM(reactor).setServiceParent(daemon)
    tune_garbage_collector()
    return daemon
