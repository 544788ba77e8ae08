"""
The C{raps} command: update, read and follow tasks, and make task ids, with
the same config file as the daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from redis_ajax_push.config import Config, ConfigError, load_config
from redis_ajax_push.daemon_url import daemon_base_url
from redis_ajax_push.follow import DaemonError, DaemonUnreachableError, TaskFollower
from redis_ajax_push.publisher import TaskPublisher
from redis_ajax_push.redis_url import RedisURL
from redis_ajax_push.signing import mint_unsigned, signer_for
from redis_ajax_push.task_update import (
    PublishError,
    StoredTaskDataError,
    TaskWriter,
)

# Exit statuses; the epilog of `raps --help` and the README list them.
EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_REDIS = 2
EXIT_NOT_FOUND = 3
EXIT_DAEMON_UNREACHABLE = 4
EXIT_DAEMON_ERROR = 5
EXIT_USAGE = 64
EXIT_BAD_DATA = 65
EXIT_CONFIG = 78

EPILOG = """\
exit status:
  0   success
  1   watch: the task ended failed (its final state has "failed": true)
  2   Redis is unreachable or returned an error
  3   the task does not exist (no data key, or the daemon answered not_found)
  4   watch: the daemon is unreachable or did not respond in time
  5   watch: the daemon responded with another error, such as killed
  64  invalid command line: unknown option, bad JSON, invalid task id,
      status or field
  65  get: the stored value is not a JSON object
  78  invalid config file, or no [security] task_id_secrets for sign
"""

# Redis commands of the CLI give up after this many seconds.
REDIS_TIMEOUT = 5.0


class CommandError(Exception):
    """
    Ends the command with one line on stderr and an exit status.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    # argparse exits with 2 on a usage error, which here means a Redis
    # failure; use 64 (EX_USAGE of sysexits.h) instead.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_global_options(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    # The options are accepted before and after the subcommand. In the
    # subcommand's parser, SUPPRESS keeps a missing option from resetting a
    # value given before the subcommand.
    default = argparse.SUPPRESS if in_subcommand else None
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="TOML config file of the daemon (default: built-in defaults)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=default,
        help="Redis URL, overriding [redis] url (example: redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--url",
        metavar="BASE",
        default=default,
        help="base URL of the daemon for watch (default: from [http] listen when "
        "it is TCP on a loopback or wildcard address, else http://127.0.0.1:8888)",
    )


def _add_write_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--field",
        "-f",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="add a field: NAME=TEXT stores a string, NAME:=JSON any JSON value "
        "(example: -f progress:=60 -f step=parsing); repeatable",
    )
    parser.add_argument(
        "--json",
        metavar="OBJECT",
        help="add the fields of a JSON object; --field overrides them",
    )
    parser.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=int,
        help="lifetime of the data key in seconds (default: no expiry)",
    )
    parser.add_argument(
        "--inline",
        action="store_true",
        help="put the state into the channel message as its data field",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="raps",
        description="Update, read and follow raps tasks, and make task ids.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, in_subcommand=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        _add_global_options(command, in_subcommand=True)
        return command

    progress = add("progress", "store a running state and announce an update")
    progress.add_argument("task_id", metavar="ID", help="task id")
    progress.add_argument(
        "--status", default="running", help="status to store (default: running)"
    )
    _add_write_options(progress)

    done = add("done", "store the final state and announce done")
    done.add_argument("task_id", metavar="ID", help="task id")
    _add_write_options(done)

    fail = add("fail", "store a failed final state and announce done")
    fail.add_argument("task_id", metavar="ID", help="task id")
    fail.add_argument("message", metavar="MESSAGE", help="error message to store")
    _add_write_options(fail)

    get = add("get", "print the task's state as stored in Redis")
    get.add_argument("task_id", metavar="ID", help="task id")

    watch = add(
        "watch",
        "follow the task through the daemon: print its state and each change "
        "as JSON lines, until it is done",
    )
    watch.add_argument("task_id", metavar="ID", help="task id")
    watch.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="connect timeout, and time without any byte after which a watch "
        "is sent again (default: 30)",
    )

    add("mint", "print a new random task id, signed when secrets are configured")

    sign = add("sign", "print ID with its tag under the first configured secret")
    sign.add_argument("task_id", metavar="ID", help="task id")
    return parser


def parse_fields(pairs: Sequence[str], json_text: str | None) -> dict[str, Any]:
    """
    Build the fields of a write from C{--json} and C{--field} values.

    @raise CommandError: with L{EXIT_USAGE} for bad JSON or a malformed pair.
    """
    fields: dict[str, Any] = {}
    if json_text is not None:
        try:
            document = json.loads(json_text)
        except ValueError as error:
            raise CommandError(
                f"--json is not valid JSON: {error}", EXIT_USAGE
            ) from None
        if not isinstance(document, dict):
            raise CommandError("--json must be a JSON object", EXIT_USAGE)
        fields.update(document)
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name.rstrip(":"):
            raise CommandError(
                f"--field {pair!r} is not NAME=TEXT or NAME:=JSON", EXIT_USAGE
            )
        if name.endswith(":"):
            name = name[:-1]
            try:
                fields[name] = json.loads(value)
            except ValueError as error:
                raise CommandError(
                    f"--field {name}: {value!r} is not valid JSON: {error}",
                    EXIT_USAGE,
                ) from None
        else:
            fields[name] = value
    return fields


def redis_client(url: RedisURL) -> Any:
    """
    Connect a redis-py client to C{url} that fails at once, without
    retries, when Redis is unreachable.

    @raise CommandError: with L{EXIT_USAGE} when redis-py is missing.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise CommandError(
            "this command needs redis-py: pip install 'raps[publisher]'", EXIT_USAGE
        ) from None
    options: dict[str, Any] = {
        "db": url.db,
        "username": url.username,
        "password": url.password,
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    if url.path is not None:
        return redis.Redis(unix_socket_path=url.path, **options)
    # parse_redis_url sets exactly one of path and host.
    assert url.host is not None
    return redis.Redis(host=url.host, port=url.port, **options)


def _publisher(config: Config, arguments: argparse.Namespace) -> TaskPublisher:
    try:
        return TaskPublisher.from_config(
            config,
            redis_client(config.redis.url),
            ttl=getattr(arguments, "ttl", None),
            inline=getattr(arguments, "inline", False),
        )
    except PublishError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, ensure_ascii=False), flush=True)


def _run_write(config: Config, arguments: argparse.Namespace) -> int:
    fields = parse_fields(arguments.field, arguments.json)
    publisher = _publisher(config, arguments)
    if arguments.command == "progress":
        publisher.progress(arguments.task_id, arguments.status, **fields)
    elif arguments.command == "done":
        publisher.done(arguments.task_id, **fields)
    else:
        publisher.fail(arguments.task_id, arguments.message, **fields)
    return EXIT_OK


def _run_get(config: Config, arguments: argparse.Namespace) -> int:
    try:
        state = _publisher(config, arguments).get(arguments.task_id)
    except StoredTaskDataError as error:
        raise CommandError(
            f"task {arguments.task_id}: {error}", EXIT_BAD_DATA
        ) from None
    if state is None:
        raise CommandError(f"task {arguments.task_id} not found", EXIT_NOT_FOUND)
    _print_json(state)
    return EXIT_OK


def _run_watch(config: Config, arguments: argparse.Namespace) -> int:
    _check_task_id(config, arguments.task_id)
    if arguments.timeout <= 0:
        raise CommandError("--timeout must be more than 0 seconds", EXIT_USAGE)
    base_url = arguments.url or daemon_base_url(config.http.listen)
    follower = TaskFollower(base_url, arguments.timeout)
    try:
        final = follower.follow(arguments.task_id, _print_json)
    except DaemonUnreachableError as error:
        raise CommandError(str(error), EXIT_DAEMON_UNREACHABLE) from None
    except DaemonError as error:
        if error.code == "not_found":
            raise CommandError(
                f"task {arguments.task_id} not found at {base_url}", EXIT_NOT_FOUND
            ) from None
        raise CommandError(
            f"raps at {base_url} responded with an error: {error}", EXIT_DAEMON_ERROR
        ) from None
    return EXIT_TASK_FAILED if final.get("failed") is True else EXIT_OK


def _check_task_id(config: Config, task_id: str) -> None:
    try:
        TaskWriter(
            task_id_rule=config.task_id, signer=signer_for(config)
        ).check_task_id(task_id)
    except PublishError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def _run_mint(config: Config, arguments: argparse.Namespace) -> int:
    signer = signer_for(config)
    print(signer.mint() if signer is not None else mint_unsigned())
    return EXIT_OK


def _run_sign(config: Config, arguments: argparse.Namespace) -> int:
    signer = signer_for(config)
    if signer is None:
        raise CommandError(
            "no [security] task_id_secrets in the config; pass --config with "
            "the daemon's config file",
            EXIT_CONFIG,
        )
    try:
        TaskWriter(task_id_rule=config.task_id).check_task_id(arguments.task_id)
    except PublishError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    print(signer.sign(arguments.task_id))
    return EXIT_OK


_COMMANDS = {
    "progress": _run_write,
    "done": _run_write,
    "fail": _run_write,
    "get": _run_get,
    "watch": _run_watch,
    "mint": _run_mint,
    "sign": _run_sign,
}


def run(argv: Sequence[str] | None = None) -> int:
    """
    Run one command and return its exit status; errors are printed to
    stderr as one line.
    """
    arguments = build_parser().parse_args(argv)
    try:
        try:
            config = load_config(arguments.config, redis_url=arguments.redis)
        except ConfigError as error:
            raise CommandError(str(error), EXIT_CONFIG) from None
        return _run_with_redis_errors(config, arguments)
    except CommandError as error:
        print(f"raps: {error}", file=sys.stderr)
        return error.status


def _run_with_redis_errors(config: Config, arguments: argparse.Namespace) -> int:
    try:
        return _COMMANDS[arguments.command](config, arguments)
    except PublishError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    except Exception as error:
        described = _describe_redis_error(error, config.redis.url)
        if described is None:
            raise
        raise described from None


def _describe_redis_error(error: Exception, url: RedisURL) -> CommandError | None:
    """
    Turn a redis-py exception into the error to exit with; C{None} for any
    other exception.
    """
    try:
        import redis
    except ImportError:
        return None
    if isinstance(error, redis.ConnectionError):
        message = f"cannot connect to Redis at {url}: {error}"
    elif isinstance(error, redis.TimeoutError):
        message = f"Redis at {url} did not respond within {REDIS_TIMEOUT} s"
    elif isinstance(error, redis.RedisError):
        message = f"Redis at {url} returned an error: {error}"
    else:
        return None
    return CommandError(message, EXIT_REDIS)


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
