"""
The health check behind C{GET /healthz}: every Redis connection the daemon
relies on must be up and respond to a PING in time.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from redis_ajax_push.commands import CommandConnection
from redis_ajax_push.errors import TaskError
from redis_ajax_push.subscriber import SubscriberPool

HEALTHY_BODY = b'{"status": "ok"}'


async def _ping_subscribers(
    pool: SubscriberPool, timeout: float, reactor: IReactorTime
) -> list[str]:
    """
    PING every subscriber connection and return the problems found.

    When all reply, a probe channel is also subscribed and released, so
    that a pool that cannot subscribe (an ACL refusal, say) is found even
    while its connections reply to PING.
    """
    problems = []
    for index, connection in enumerate(list(pool.connections)):
        if connection.protocol is None:
            problems.append(f"subscriber connection {index}: not connected")
            continue
        ping = defer.maybeDeferred(connection.protocol.ping)
        ping.addTimeout(timeout, reactor)
        try:
            await ping
        except Exception as error:
            problems.append(f"subscriber connection {index}: PING failed ({error})")
    if problems:
        return problems

    try:
        await pool.probe()
    except TaskError as error:
        problems.append(f"subscriber pool: {error.detail or error.kind.message}")
    return problems


async def check_health(
    commands: CommandConnection,
    pool: SubscriberPool,
    timeout: float,
    reactor: IReactorTime,
) -> list[str]:
    """
    Check the command connection and the subscriber pool; return the
    problems found, an empty list when healthy.
    """
    problems = []
    try:
        await commands.ping()
    except TaskError as error:
        problems.append(f"command connection: {error.detail or error.kind.message}")
    problems.extend(await _ping_subscribers(pool, timeout, reactor))
    return problems


def unhealthy_body(problems: list[str]) -> bytes:
    """
    Build the 503 body listing C{problems}.
    """
    document: dict[str, Any] = {
        "status": "error",
        "error": "unhealthy",
        "error_message": "; ".join(problems),
        "problems": problems,
    }
    return json.dumps(document).encode("utf-8")
