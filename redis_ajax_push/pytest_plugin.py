"""
pytest fixtures for applications that use raps, registered as the pytest
plugin C{raps} when raps is installed:

  - C{raps_redis}: a private redis-server on 127.0.0.1 and a free port, for
    the whole session;
  - C{raps_clean_redis}: the same server, emptied before the test;
  - C{raps_config}: the config of C{raps_daemon}; override this fixture to
    change it, for example with L{daemon_config}'s section arguments;
  - C{raps_daemon}: an in-process daemon on 127.0.0.1 and a port that the
    system picks, bound to that Redis, with C{.base_url} and C{.url(path)}
    (needs pytest-twisted);
  - C{raps_publisher}: a L{TaskPublisher} bound to that Redis (needs
    redis-py).

The module imports only pytest at load time, so that the plugin costs
nothing in test sessions that do not use its fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from redis_ajax_push.config import Config
    from redis_ajax_push.publisher import TaskPublisher
    from redis_ajax_push.testing import RedisServer, RunningDaemon


@pytest.fixture(scope="session")
def raps_redis() -> Iterator[RedisServer]:
    """
    A redis-server for the whole session, on 127.0.0.1 and a free port,
    with persistence off. A test that stops it should start it again;
    C{raps_clean_redis} restarts it when needed.
    """
    from redis_ajax_push.testing import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def raps_clean_redis(raps_redis: RedisServer) -> RedisServer:
    """
    The session's redis-server, running and with every database emptied.
    """
    from redis_ajax_push.testing import flush_redis

    flush_redis(raps_redis)
    return raps_redis


@pytest.fixture
def raps_config(raps_redis: RedisServer) -> Config:
    """
    The config of C{raps_daemon}: the defaults, with HTTP on 127.0.0.1 and
    a free port and Redis at C{raps_redis}.
    """
    from redis_ajax_push.testing import daemon_config

    return daemon_config(raps_redis.url)


@pytest.fixture
def raps_daemon(raps_clean_redis: RedisServer, raps_config: Config) -> Iterator[Any]:
    """
    An in-process daemon with C{raps_config}, stopped after the test. It
    runs on the reactor of pytest-twisted, so the test must be a
    pytest-twisted test, such as one decorated with
    C{@pytest_twisted.ensureDeferred}.
    """
    try:
        import pytest_twisted
    except ImportError:
        pytest.fail(
            "the raps_daemon fixture needs pytest-twisted: pip install pytest-twisted",
            pytrace=False,
        )
    from twisted.internet import defer

    from redis_ajax_push.testing import start_daemon

    daemon: RunningDaemon = pytest_twisted.blockon(
        defer.Deferred.fromCoroutine(start_daemon(raps_config))
    )
    yield daemon
    pytest_twisted.blockon(daemon.stop())


@pytest.fixture
def raps_publisher(raps_clean_redis: RedisServer) -> Iterator[TaskPublisher]:
    """
    A L{TaskPublisher} with the default prefix, bound to C{raps_redis}.
    """
    try:
        import redis
    except ImportError:
        pytest.fail(
            "the raps_publisher fixture needs redis-py: pip install 'raps[publisher]'",
            pytrace=False,
        )
    from redis_ajax_push.publisher import TaskPublisher

    client = redis.Redis(host=raps_clean_redis.host, port=raps_clean_redis.port)
    yield TaskPublisher(client)
    client.close()
