"""
The C{twistd raps} command: its options and the service tree it runs.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
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

    def postOptions(self) -> None:
        try:
            self.config = load_config(self["config"], self["listen"], self["redis"])
        except ConfigError as error:
            # One line and no usage text: the options were fine, the values
            # were not.
            raise SystemExit(f"raps: {error}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service tree of one daemon from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return RapsService(options.config, reactor)
