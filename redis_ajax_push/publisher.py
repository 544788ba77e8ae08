"""
Task updates from a worker: L{TaskPublisher} on redis-py, and helpers to
make and sign task ids.

redis-py is an optional dependency (C{pip install 'raps[publisher]'}). This
module imports without it: L{TaskPublisher} uses only the client passed to
it, and L{TaskPublisher.from_url} imports redis-py when called.

For Twisted applications, L{redis_ajax_push.tx_publisher.TxTaskPublisher}
has the same methods and returns Deferreds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis_ajax_push.config import MIN_SECRET_BYTES, Config, TaskIdConfig
from redis_ajax_push.signing import TaskIdSigner, mint_unsigned, signer_for
from redis_ajax_push.task_update import (
    SET_AND_PUBLISH,
    InvalidTaskDataError,
    InvalidTaskIdError,
    PublishError,
    StoredTaskDataError,
    TaskWrite,
    TaskWriter,
    decode_state,
)

if TYPE_CHECKING:
    import redis

__all__ = [
    "InvalidTaskDataError",
    "InvalidTaskIdError",
    "PublishError",
    "StoredTaskDataError",
    "TaskPublisher",
    "make_signer",
    "mint_task_id",
    "sign_task_id",
    "verify_task_id",
]


class TaskPublisher:
    """
    Writes task states for raps with a redis-py client.

    Each write stores the data key C{<prefix>D_<task id>} and publishes the
    matching message on C{<prefix>SC_<task id>} in one atomic Lua script, so
    a watcher never receives a message before the data it announces. Each
    write method returns the number of subscribers that received the
    message, which is the number of raps daemons with a watch on the task.

    @param ttl: lifetime of the data key in seconds, renewed by each write;
        C{None} keeps the key until it is deleted.
    @param inline: put the task state into each message as its C{data}
        field, which the daemon relays as the response to a waiting watch
        instead of reading the data key again.
    @param task_id_rule: the daemon's C{[task_id]} rule (its defaults when
        C{None}).
    @param signer: when given, every task id must carry a valid tag, as a
        daemon with C{[security] task_id_secrets} requires.

    @raise PublishError: from the write methods, for an invalid task id,
        status or field, before any Redis command is sent. Redis failures
        raise the client's own exceptions (C{redis.RedisError}).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = "RA_",
        ttl: int | None = None,
        inline: bool = False,
        *,
        task_id_rule: TaskIdConfig | None = None,
        signer: TaskIdSigner | None = None,
    ) -> None:
        self._writer = TaskWriter(prefix, ttl, inline, task_id_rule, signer)
        self.redis = redis_client
        self._script = redis_client.register_script(SET_AND_PUBLISH)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> TaskPublisher:
        """
        Connect a new redis-py client to C{url} (C{redis://host:port/db} or
        C{unix:///path?db=N}) and return a publisher using it. C{options}
        are those of L{TaskPublisher}.
        """
        import redis

        return cls(redis.Redis.from_url(url), **options)

    @classmethod
    def from_config(
        cls,
        config: Config,
        redis_client: redis.Redis,
        ttl: int | None = None,
        inline: bool = False,
    ) -> TaskPublisher:
        """
        Return a publisher that follows a daemon's config: its prefix, its
        task id rule and, when it has secrets, signed ids only.
        """
        return cls(
            redis_client,
            config.redis.prefix,
            ttl,
            inline,
            task_id_rule=config.task_id,
            signer=signer_for(config),
        )

    @property
    def prefix(self) -> str:
        return self._writer.keys.prefix

    @property
    def ttl(self) -> int | None:
        return self._writer.ttl

    @property
    def inline(self) -> bool:
        return self._writer.inline

    def progress(self, task_id: str, status: str = "running", **fields: Any) -> int:
        """
        Store a non-final state C{{"status": status, **fields}} and announce
        it with an C{update} message.

        The status is free-form except for the final and protocol words
        C{done}, C{failed}, C{update}, C{kill} and C{error}, which raise
        L{InvalidTaskDataError}.
        """
        return self._send(self._writer.progress(task_id, status, fields))

    def done(self, task_id: str, **fields: Any) -> int:
        """
        Store the final state C{{"status": "done", **fields}} and announce it
        with a C{done} message. Watches started later return it at once.
        """
        return self._send(self._writer.done(task_id, fields))

    def fail(self, task_id: str, error_message: str, **fields: Any) -> int:
        """
        Store the final state C{{"status": "done", "failed": true,
        "error_message": error_message, **fields}} and announce it with a
        C{done} message, so that every watch ends, later ones included.
        """
        return self._send(self._writer.fail(task_id, error_message, fields))

    def get(self, task_id: str) -> dict[str, Any] | None:
        """
        Read a task's current state, or C{None} when its data key does not
        exist.

        @raise StoredTaskDataError: when the stored value is not a JSON
            object.
        """
        raw = self.redis.get(self._writer.data_key(task_id))
        if raw is None:
            return None
        return decode_state(raw)

    def _send(self, write: TaskWrite) -> int:
        receivers = self._script(keys=[write.data_key], args=write.script_args)
        return int(receivers)


def make_signer(task_id_secrets: Sequence[str | bytes]) -> TaskIdSigner:
    """
    Build a signer from secrets given as the daemon's config lists them:
    the first signs, all verify. Text secrets are encoded as UTF-8.

    @raise ValueError: when the list is empty or a secret is shorter than
        16 bytes, which the daemon rejects too.
    """
    encoded = []
    for index, secret in enumerate(task_id_secrets):
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(
                f"secret {index} is shorter than {MIN_SECRET_BYTES} bytes; "
                "generate one with secrets.token_hex(32)"
            )
        encoded.append(raw)
    if not encoded:
        raise ValueError("at least one secret is needed to sign task ids")
    return TaskIdSigner(encoded)


def sign_task_id(
    task_id: str,
    task_id_secrets: Sequence[str | bytes],
    task_id_rule: TaskIdConfig | None = None,
) -> str:
    """
    Return C{task_id} with the tag of the first secret appended.

    @raise InvalidTaskIdError: when C{task_id} does not pass the task id
        rule (the defaults of C{[task_id]} when C{task_id_rule} is C{None}),
        so that the daemon would reject the signed id.
    @raise ValueError: for missing or short secrets.
    """
    signer = make_signer(task_id_secrets)
    rule = task_id_rule if task_id_rule is not None else TaskIdConfig()
    # A writer without a signer checks the id as an unsigned one.
    TaskWriter(task_id_rule=rule).check_task_id(task_id)
    return signer.sign(task_id)


def verify_task_id(task_id: str, task_id_secrets: Sequence[str | bytes]) -> bool:
    """
    Tell whether C{task_id} carries a valid tag under any of the secrets.
    """
    return make_signer(task_id_secrets).verify(task_id)


def mint_task_id(task_id_secrets: Sequence[str | bytes] = ()) -> str:
    """
    Return a new random task id of 128 bits, signed with the first secret
    when secrets are given.
    """
    if not task_id_secrets:
        return mint_unsigned()
    return make_signer(task_id_secrets).mint()
