"""
The Prometheus metrics of one daemon, served at C{GET /metrics}.

Each L{Metrics} has its own C{CollectorRegistry}, so that several daemons in
one process (as in the tests) count separately.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("ascii")

# The modes of GET /task/<task id>, and "invalid" for a query string that
# names none of them.
MODES = ("poll", "watch", "stream", "invalid")

# Watches last from milliseconds (done at once) to hours (a slow task).
_DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

# Delivery is a hop through the reactor and maybe one GET of the data key.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class Metrics:
    """
    The counters, gauges and histograms of one daemon.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.open_watches = Gauge(
            "raps_open_watches",
            "Watches open now, by mode (watch or stream)",
            ["mode"],
            registry=registry,
        )
        self.requests = Counter(
            "raps_requests",
            "Requests of GET /task/<task id> by mode (poll, watch, stream or "
            "invalid) and outcome (ok, an error code, or disconnected when the "
            "client closed the connection first)",
            ["mode", "outcome"],
            registry=registry,
        )
        self.watch_duration = Histogram(
            "raps_watch_duration_seconds",
            "Time from admitting a watch to its end, in seconds, by mode",
            ["mode"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "raps_delivery_latency_seconds",
            "Time from a channel message's arrival in the daemon to the write "
            "of the watch response or stream event it caused, in seconds",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.heartbeats = Counter(
            "raps_heartbeats",
            "Heartbeats written to waiting watches and streams",
            registry=registry,
        )
        self.kills = Counter(
            "raps_kills",
            "Watches and streams ended by the kill of a newer watch of the task",
            registry=registry,
        )
        self.redis_reconnects = Counter(
            "raps_redis_reconnects",
            "Redis connections made again after a loss, by connection kind "
            "(command or subscriber)",
            ["connection"],
            registry=registry,
        )
        self.subscriber_connections = Gauge(
            "raps_subscriber_connections",
            "Connections of the subscriber pool, connected or reconnecting",
            registry=registry,
        )
        self.subscribed_channels = Gauge(
            "raps_subscribed_channels",
            "Channels that the subscriber pool holds for open watches",
            registry=registry,
        )
        # Children made once, so that the request path only looks them up.
        self._request_children: dict[tuple[str, str], Counter] = {}
        self.command_reconnects = self.redis_reconnects.labels("command")
        self.subscriber_reconnects = self.redis_reconnects.labels("subscriber")

    def count_request(self, mode: str, outcome: str) -> None:
        """
        Count one finished request of C{GET /task/<task id>}.
        """
        key = (mode, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(mode, outcome)
        child.inc()

    def watch_gauges(self, mode: str) -> tuple[Gauge, Histogram]:
        """
        Return the open watches gauge and the duration histogram of C{mode}.
        """
        return self.open_watches.labels(mode), self.watch_duration.labels(mode)

    def track_pool(
        self, connection_count: Callable[[], float], channel_count: Callable[[], float]
    ) -> None:
        """
        Read the subscriber pool's sizes from these functions at each scrape.
        """
        self.subscriber_connections.set_function(connection_count)
        self.subscribed_channels.set_function(channel_count)

    def render(self) -> bytes:
        """
        Return every metric in the Prometheus text format.
        """
        return generate_latest(self.registry)
