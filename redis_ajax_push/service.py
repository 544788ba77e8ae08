"""
The service tree of one daemon: Redis connections, the HTTP listener and,
with C{[http] workers}, the worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from redis_ajax_push.admin import AdminResource
from redis_ajax_push.channel import RapsSite
from redis_ajax_push.commands import CommandConnection
from redis_ajax_push.config import Config
from redis_ajax_push.inherited_socket import adopt_listening_socket
from redis_ajax_push.logs import RepeatedWarnings, RequestRecorder
from redis_ajax_push.metrics import Metrics
from redis_ajax_push.resource import TaskResource
from redis_ajax_push.subscriber import SubscriberPool
from redis_ajax_push.workers import WorkerSupervisor


class RedisService(Service):
    """
    Owns the command connection and the subscriber pool: connects on start,
    closes every connection on stop.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        metrics: Metrics,
        warnings: RepeatedWarnings,
    ) -> None:
        redis = config.redis
        self.url = redis.url
        self.commands = CommandConnection(
            redis.url,
            redis.command_timeout,
            reactor,
            on_reconnect=metrics.command_reconnects.inc,
            warnings=warnings,
        )
        self.pool = SubscriberPool(
            redis.url,
            redis.channels_per_connection,
            redis.subscriber_idle_timeout,
            redis.command_timeout,
            reactor,
            probe_channel=f"{redis.prefix}HEALTH",
            on_reconnect=metrics.subscriber_reconnects.inc,
        )
        pool = self.pool
        metrics.track_pool(lambda: len(pool.connections), lambda: pool.channel_count)

    def startService(self) -> None:
        super().startService()
        self.log.info("Connecting to Redis at {url}", url=str(self.url))
        self.commands.start()

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.gatherResults([self.commands.stop(), self.pool.close()])


class _PortService(Service):
    """
    Holds the listening port of an HTTP service and stops listening when the
    service stops. L{listening} fires with the port once it serves.
    """

    def __init__(self) -> None:
        self._port: IListeningPort | None = None
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._port is None:
            return None
        port, self._port = self._port, None
        return port.stopListening()


class HTTPService(_PortService):
    """
    Listens on a Twisted server endpoint string. L{listening} fires with the
    L{IListeningPort} once the port is open.

    It listens in L{privilegedStartService}, so that a port below 1024 can
    be bound before twistd drops privileges.
    """

    log = Logger()

    def __init__(self, description: str, site: Site, reactor: Any) -> None:
        super().__init__()
        self._endpoint = serverFromString(reactor, description)
        self._description = description
        self._site = site
        self._started_listening = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._started_listening:
            return
        self._started_listening = True
        failures: list[Failure] = []
        listening = self._endpoint.listen(self._site)
        listening.addCallbacks(self._listened, failures.append)
        if failures:
            # TCP, UNIX and SSL endpoints fail at once, while twistd is
            # still starting: stop it with one line instead of serving
            # nothing.
            raise SystemExit(
                f"raps: cannot listen on {self._description}: "
                f"{failures[0].getErrorMessage()}"
            )
        listening.addErrback(self._listen_failed)

    def _listened(self, port: IListeningPort) -> None:
        self._port = port
        address = port.getHost()
        self.log.info(
            "Serving HTTP on {host}:{port}",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )
        self.listening.callback(port)

    def _listen_failed(self, failure: Failure) -> None:
        self.log.error(
            "Cannot listen on {endpoint}: {error}",
            endpoint=self._description,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)


def _address_text(address: Any) -> str:
    """
    Return C{host:port} for a TCP address and the path for a UNIX one.
    """
    if isinstance(address, UNIXAddress):
        return str(address.name)
    return f"{address.host}:{address.port}"


class InheritedPortService(_PortService):
    """
    Serves a listening socket inherited from the parent process as file
    descriptor C{descriptor}, in a worker process of C{[http] workers}.
    L{listening} fires with the L{IListeningPort} once it serves.
    """

    log = Logger()

    def __init__(self, descriptor: int, site: Site, reactor: Any) -> None:
        super().__init__()
        self._descriptor = descriptor
        self._site = site
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        try:
            port = adopt_listening_socket(self._reactor, self._descriptor, self._site)
        # OSError for a descriptor that is closed or no socket, Twisted's
        # UnsupportedAddressFamily for a socket that is not TCP or UNIX.
        except Exception as error:
            raise SystemExit(
                f"raps: cannot serve the listening socket inherited as file "
                f"descriptor {self._descriptor}: {error}"
            ) from None
        self._port = port
        self.log.info(
            "Serving HTTP on {address}, inherited from the parent process",
            address=_address_text(port.getHost()),
        )
        self.listening.callback(port)


class RapsService(MultiService):
    """
    One raps daemon: its Redis connections, its HTTP listener and, when
    C{[admin] listen} is set, the admin listener for C{/healthz} and
    C{/metrics}.

    With C{[http] workers} above 1 it also runs the worker processes, which
    get C{worker_options} (the config file and the command line overrides).
    In a worker process, C{inherited_socket} is the file descriptor of the
    parent's listening socket, which it serves instead of C{[http] listen},
    and it runs no admin listener and no worker processes.

    Stopping it stops listening first, then ends the open watches with the
    C{shutting_down} error, waiting at most C{shutdown_grace} seconds for
    their responses, and closes the Redis connections last. The worker
    processes get SIGTERM at the start of the stop, and the stop ends when
    they have exited.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        worker_options: Sequence[str] | None = None,
        inherited_socket: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.metrics = Metrics()
        self.warnings = RepeatedWarnings(reactor)
        self.redis = RedisService(config, reactor, self.metrics, self.warnings)
        self.redis.setServiceParent(self)
        admin_listen = config.admin.listen
        self.tasks = TaskResource(
            config,
            self.redis.commands,
            self.redis.pool,
            reactor,
            self.metrics,
            serve_admin=not admin_listen,
            warnings=self.warnings,
        )
        recorder = RequestRecorder(self.metrics, config.log.access)
        site = RapsSite(self.tasks.resource(), on_request_done=recorder)
        self.http: HTTPService | InheritedPortService
        if inherited_socket is None:
            self.http = HTTPService(config.http.listen, site, reactor)
        else:
            self.http = InheritedPortService(inherited_socket, site, reactor)
        self.http.setServiceParent(self)
        self.admin: HTTPService | None = None
        # NOTE: metrics are per process. With [http] workers above 1 only the
        # parent runs the admin listener, whose /healthz and /metrics report
        # the parent alone, and on [http] listen they come from whichever
        # process accepted the connection.
        if admin_listen and inherited_socket is None:
            admin = AdminResource(self.tasks, config.http.legacy_status_codes)
            admin_site = RapsSite(admin.resource(), on_request_done=recorder)
            self.admin = HTTPService(admin_listen, admin_site, reactor)
            self.admin.setServiceParent(self)
        self.workers: WorkerSupervisor | None = None
        if config.http.workers > 1 and inherited_socket is None:
            if worker_options is None:
                raise ValueError(
                    "[http] workers is above 1, so pass worker_options: the "
                    "options that the worker processes load their config with"
                )
            self.workers = WorkerSupervisor(
                config.http.workers - 1,
                worker_options,
                self.http.listening,
                config.watch.shutdown_grace,
                reactor,
            )
            self.workers.setServiceParent(self)

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        workers_stopped = None
        if self.workers is not None:
            workers_stopped = defer.maybeDeferred(self.workers.stopService)
        await defer.maybeDeferred(self.http.stopService)
        if self.admin is not None:
            await defer.maybeDeferred(self.admin.stopService)
        open_watches = len(self.tasks.watches)
        self.log.info("Stopping: ending {count} open watches", count=open_watches)
        await self.tasks.watches.end_all(
            self._reactor, self.config.watch.shutdown_grace
        )
        if open_watches:
            # NOTE: the responses are in the transports' write buffers; this
            # gives the reactor a moment to send them before twistd drops
            # every connection. Slow clients may still miss theirs.
            await task.deferLater(self._reactor, 0.1, lambda: None)
        await self.redis.stopService()
        if workers_stopped is not None:
            await workers_stopped
        self.warnings.stop()
        self.log.info("Stopped")
