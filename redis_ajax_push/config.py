"""
Configuration: the TOML file, its defaults and its validation.

Every key is checked at startup. A user mistake raises L{ConfigError} with one
sentence that names the key and the fix, never a traceback.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from redis_ajax_push.redis_url import RedisURL, RedisURLError, parse_redis_url

# Python 3.11 added tomllib, a standard library copy of tomli. On older
# versions, such as PyPy 3.9, pip installs tomli as a dependency.
if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


class ConfigError(Exception):
    """
    A configuration file or option is invalid. The message is one sentence
    meant for the operator.
    """


# The maximum number of processes that [http] workers may start: one per
# core of a big machine, far from the thousands that a typo would fork.
MAX_WORKERS = 256


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = "tcp:8888:interface=127.0.0.1"
    legacy_status_codes: bool = False
    serve_client: bool = True
    demo: bool = False
    # Exact origins ("https://app.example.com") whose pages may read the
    # responses; "*" allows every origin.
    cors_origins: tuple[str, ...] = ()
    # Processes that serve http.listen: this one and workers - 1 worker
    # processes that inherit its listening socket.
    workers: int = 1


@dataclass(frozen=True)
class RedisConfig:
    url: RedisURL = field(
        default_factory=lambda: parse_redis_url("redis://127.0.0.1:6379/0")
    )
    prefix: str = "RA_"
    channels_per_connection: int = 1000
    command_timeout: float = 2.0
    subscriber_idle_timeout: float = 30.0


@dataclass(frozen=True)
class WatchConfig:
    heartbeat_interval: float = 10.0
    resubscribe_timeout: float = 10.0
    shutdown_grace: float = 5.0
    stream_retry: float = 2.0


@dataclass(frozen=True)
class LimitsConfig:
    max_watches: int = 10000
    max_watches_per_client: int = 0
    watch_timeout: float = 0.0
    max_message_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class TaskIdConfig:
    pattern: str = "[A-Za-z0-9_]+"
    max_length: int = 32


@dataclass(frozen=True)
class SecurityConfig:
    # The secrets themselves, never their source; repr=False keeps them out
    # of logs and tracebacks.
    task_id_secrets: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class AdminConfig:
    # Empty: /healthz and /metrics are served on http.listen.
    listen: str = ""


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogConfig:
    access: bool = True
    format: str = "text"


@dataclass(frozen=True)
class Config:
    http: HTTPConfig = field(default_factory=HTTPConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    task_id: TaskIdConfig = field(default_factory=TaskIdConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _check_type(key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    # bool is a subclass of int, and "true" is never meant as a number.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{key}: expected {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(
            f"{key}: expected {_kind_name(kind)}, got {type(value).__name__}"
        )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        float: "a number",
        list: "an array",
    }
    if isinstance(kind, tuple):
        return "a number"
    return names.get(kind, kind.__name__)


def _take(
    table: dict[str, Any], section: str, key: str, kind: Any, default: Any
) -> Any:
    if key not in table:
        return default
    value = table.pop(key)
    _check_type(f"{section}.{key}", value, kind)
    if kind == (int, float):
        if not math.isfinite(value):
            raise ConfigError(f"{section}.{key}: must be a finite number, not {value}")
        return float(value)
    return value


def _reject_unknown(table: dict[str, Any], section: str) -> None:
    if table:
        unknown = ", ".join(sorted(f"{section}.{key}" for key in table))
        raise ConfigError(f"unknown key {unknown}: remove it or check its spelling")


def _section(document: dict[str, Any], name: str) -> dict[str, Any]:
    table = document.pop(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table [{name}]")
    return dict(table)


def _parse_http(table: dict[str, Any]) -> HTTPConfig:
    default = HTTPConfig()
    listen = _take(table, "http", "listen", str, default.listen)
    legacy = _take(
        table, "http", "legacy_status_codes", bool, default.legacy_status_codes
    )
    serve_client = _take(table, "http", "serve_client", bool, default.serve_client)
    demo = _take(table, "http", "demo", bool, default.demo)
    cors_origins = _take(table, "http", "cors_origins", list, [])
    workers = _take(table, "http", "workers", int, default.workers)
    _reject_unknown(table, "http")
    if demo and not serve_client:
        raise ConfigError(
            "http.demo: the demo page loads /static/raps.js, so set "
            "http.serve_client = true or http.demo = false"
        )
    if workers < 1:
        raise ConfigError(f"http.workers: must be 1 or more, not {workers}")
    if workers > MAX_WORKERS:
        raise ConfigError(
            f"http.workers: must be at most {MAX_WORKERS}, not {workers}; one "
            "process per CPU core is enough"
        )
    return HTTPConfig(
        listen=listen,
        legacy_status_codes=legacy,
        serve_client=serve_client,
        demo=demo,
        cors_origins=_checked_origins(cors_origins),
        workers=workers,
    )


# scheme://host[:port] as a browser sends it in the Origin header: no user
# info, path, query or trailing slash.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/?#@\\]+", re.ASCII)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _checked_origins(entries: list[Any]) -> tuple[str, ...]:
    origins = []
    for index, entry in enumerate(entries):
        key = f"http.cors_origins[{index}]"
        _check_type(key, entry, str)
        if entry != "*" and not _is_origin(entry):
            raise ConfigError(
                f"{key}: {entry!r} is not an origin; write lowercase "
                "scheme://host[:port] with no path and no default port, like "
                '"https://app.example.com", or "*" for every origin'
            )
        origins.append(entry)
    return tuple(origins)


def _is_origin(text: str) -> bool:
    # Browsers send the host in lowercase and leave out a default port, so
    # an entry written otherwise would never match an Origin header.
    if not _ORIGIN.fullmatch(text) or text != text.lower() or text.endswith(":"):
        return False
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname:
        return False
    return port is None or port != _DEFAULT_PORTS.get(parts.scheme)


def _parse_redis(table: dict[str, Any]) -> RedisConfig:
    default = RedisConfig()
    number = (int, float)
    url_text = _take(table, "redis", "url", str, None)
    url = default.url if url_text is None else _checked_url("redis.url", url_text)
    prefix = _take(table, "redis", "prefix", str, default.prefix)
    per_connection = _take(
        table,
        "redis",
        "channels_per_connection",
        int,
        default.channels_per_connection,
    )
    command_timeout = _take(
        table, "redis", "command_timeout", number, default.command_timeout
    )
    idle_timeout = _take(
        table,
        "redis",
        "subscriber_idle_timeout",
        number,
        default.subscriber_idle_timeout,
    )
    connection = _take_connection_options(table)
    _reject_unknown(table, "redis")
    url = _with_connection_options("redis.url", url, connection)

    if not prefix or any(ch.isspace() for ch in prefix):
        raise ConfigError("redis.prefix: must be non-empty and contain no whitespace")
    if per_connection < 1:
        raise ConfigError("redis.channels_per_connection: must be 1 or more")
    if command_timeout <= 0:
        raise ConfigError("redis.command_timeout: must be more than 0 seconds")
    if idle_timeout < 0:
        raise ConfigError("redis.subscriber_idle_timeout: must be 0 or more seconds")
    return RedisConfig(
        url=url,
        prefix=prefix,
        channels_per_connection=per_connection,
        command_timeout=command_timeout,
        subscriber_idle_timeout=idle_timeout,
    )


def _parse_watch(table: dict[str, Any]) -> WatchConfig:
    default = WatchConfig()
    number = (int, float)
    interval = _take(
        table, "watch", "heartbeat_interval", number, default.heartbeat_interval
    )
    resubscribe_timeout = _take(
        table, "watch", "resubscribe_timeout", number, default.resubscribe_timeout
    )
    shutdown_grace = _take(
        table, "watch", "shutdown_grace", number, default.shutdown_grace
    )
    stream_retry = _take(table, "watch", "stream_retry", number, default.stream_retry)
    _reject_unknown(table, "watch")
    if interval < 0:
        raise ConfigError("watch.heartbeat_interval: must be 0 (off) or more seconds")
    if resubscribe_timeout <= 0:
        raise ConfigError("watch.resubscribe_timeout: must be more than 0 seconds")
    if shutdown_grace < 0:
        raise ConfigError("watch.shutdown_grace: must be 0 or more seconds")
    if stream_retry <= 0:
        raise ConfigError("watch.stream_retry: must be more than 0 seconds")
    return WatchConfig(
        heartbeat_interval=interval,
        resubscribe_timeout=resubscribe_timeout,
        shutdown_grace=shutdown_grace,
        stream_retry=stream_retry,
    )


# Smaller limits would reject the daemon's own kill messages.
MIN_MESSAGE_BYTES = 1024


def _parse_limits(table: dict[str, Any]) -> LimitsConfig:
    default = LimitsConfig()
    max_watches = _take(table, "limits", "max_watches", int, default.max_watches)
    per_client = _take(
        table,
        "limits",
        "max_watches_per_client",
        int,
        default.max_watches_per_client,
    )
    watch_timeout = _take(
        table, "limits", "watch_timeout", (int, float), default.watch_timeout
    )
    max_message_bytes = _take(
        table, "limits", "max_message_bytes", int, default.max_message_bytes
    )
    _reject_unknown(table, "limits")
    if max_watches < 0:
        raise ConfigError("limits.max_watches: must be 0 (no limit) or more")
    if per_client < 0:
        raise ConfigError("limits.max_watches_per_client: must be 0 (no limit) or more")
    if watch_timeout < 0:
        raise ConfigError(
            "limits.watch_timeout: must be 0 (wait forever) or more seconds"
        )
    if max_message_bytes < MIN_MESSAGE_BYTES:
        raise ConfigError(
            f"limits.max_message_bytes: must be {MIN_MESSAGE_BYTES} or more"
        )
    return LimitsConfig(
        max_watches=max_watches,
        max_watches_per_client=per_client,
        watch_timeout=watch_timeout,
        max_message_bytes=max_message_bytes,
    )


def _parse_task_id(table: dict[str, Any]) -> TaskIdConfig:
    default = TaskIdConfig()
    pattern = _take(table, "task_id", "pattern", str, default.pattern)
    max_length = _take(table, "task_id", "max_length", int, default.max_length)
    _reject_unknown(table, "task_id")
    try:
        re.compile(pattern, re.ASCII)
    # ValueError: an inline (?u) flag contradicts re.ASCII.
    except (re.error, ValueError) as error:
        raise ConfigError(
            f"task_id.pattern: {pattern!r} is not a valid regular expression ({error})"
        ) from None
    if max_length < 1:
        raise ConfigError("task_id.max_length: must be 1 or more")
    return TaskIdConfig(pattern=pattern, max_length=max_length)


# Shorter secrets are too easy to guess.
MIN_SECRET_BYTES = 16


def _load_secret(key: str, entry: str) -> bytes:
    """
    Resolve one secret entry: C{env:NAME} reads an environment variable,
    C{file:PATH} a file (without its trailing newline), anything else is
    the secret itself.
    """
    if entry.startswith("env:"):
        name = entry[len("env:") :]
        if name not in os.environ:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        secret = os.environ[name].encode("utf-8")
        source = f"environment variable {name}"
    elif entry.startswith("file:"):
        path = entry[len("file:") :]
        try:
            secret = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as error:
            raise ConfigError(
                f"{key}: cannot read secret file {path}: {error.strerror}"
            ) from None
        source = f"file {path}"
    else:
        secret = entry.encode("utf-8")
        source = "an inline secret"
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{key}: {source} is shorter than {MIN_SECRET_BYTES} bytes; generate "
            "one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return secret


def _parse_security(table: dict[str, Any]) -> SecurityConfig:
    entries = _take(table, "security", "task_id_secrets", list, [])
    _reject_unknown(table, "security")
    loaded = []
    for index, entry in enumerate(entries):
        key = f"security.task_id_secrets[{index}]"
        _check_type(key, entry, str)
        loaded.append(_load_secret(key, entry))
    return SecurityConfig(task_id_secrets=tuple(loaded))


_CONNECTION_KEYS = ("tls_ca", "tls_cert", "tls_key", "sentinels", "sentinel_service")


def _take_connection_options(table: dict[str, Any]) -> dict[str, Any]:
    """
    Take the [redis] keys that RedisURL carries beside the URL itself: the
    TLS files and the Sentinel settings.
    """
    options: dict[str, Any] = {}
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = _take(table, "redis", key, str, None)
        if path is not None:
            _check_readable_file(f"redis.{key}", path)
        options[key] = path
    entries = _take(table, "redis", "sentinels", list, [])
    options["sentinels"] = tuple(
        _parse_sentinel_address(f"redis.sentinels[{index}]", entry)
        for index, entry in enumerate(entries)
    )
    service = _take(table, "redis", "sentinel_service", str, None)
    if service is not None and (not service or any(ch.isspace() for ch in service)):
        raise ConfigError(
            "redis.sentinel_service: must be a non-empty master name without "
            "whitespace, such as mymaster"
        )
    options["sentinel_service"] = service
    return options


def _check_readable_file(key: str, path: str) -> None:
    try:
        with Path(path).open("rb") as pem_file:
            pem_file.read(1)
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror}") from None


def _parse_sentinel_address(key: str, entry: Any) -> tuple[str, int]:
    _check_type(key, entry, str)
    example = 'use "host:port", such as "127.0.0.1:26380" or "[::1]:26380"'
    host, separator, port_text = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not host or ":" in host and not entry.startswith("["):
        raise ConfigError(f"{key}: {entry!r} is not a Sentinel address; {example}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"{key}: {entry!r} has an invalid port; {example}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: {entry!r} has an invalid port; use 1 to 65535")
    return host, port


def _with_connection_options(
    key: str, url: RedisURL, options: dict[str, Any]
) -> RedisURL:
    """
    Attach the TLS files and Sentinel settings to C{url}, checking that they
    fit its scheme and each other. C{key} names the URL's source in errors.
    """
    url = replace(url, **options)
    if (url.tls_ca or url.tls_cert or url.tls_key) and not url.tls:
        raise ConfigError(
            f"{key}: redis.tls_ca, redis.tls_cert and redis.tls_key need a "
            "rediss:// URL; change the scheme or remove those keys"
        )
    if (url.tls_cert is None) != (url.tls_key is None):
        raise ConfigError(
            "redis.tls_cert and redis.tls_key: set both for a client "
            "certificate, or neither"
        )
    if url.tls:
        _check_tls_files(url)
    if bool(url.sentinels) != (url.sentinel_service is not None):
        raise ConfigError(
            "redis.sentinels and redis.sentinel_service: set both to find the "
            "master through Sentinel, or neither"
        )
    if url.sentinels and url.path is not None:
        raise ConfigError(
            f"{key}: Sentinel needs a redis:// or rediss:// URL, which gives "
            "the database, credentials and TLS; its host is not used"
        )
    return url


def _check_tls_files(url: RedisURL) -> None:
    # Imported here: the module pulls in pyOpenSSL, which only TLS needs.
    from redis_ajax_push.redis_tls import client_tls_options

    try:
        client_tls_options("localhost", url)
    # pyOpenSSL raises its own Error for a bad PEM file or a key that does
    # not match its certificate.
    except Exception as error:
        raise ConfigError(
            "redis.tls_ca, redis.tls_cert, redis.tls_key: cannot load the TLS "
            f"files ({error}); give PEM files, and a key that matches the "
            "certificate"
        ) from None


def _checked_url(key: str, text: str) -> RedisURL:
    try:
        return parse_redis_url(text)
    except RedisURLError as error:
        raise ConfigError(f"{key}: {error}") from None


def _check_listen(key: str, description: str) -> object:
    """
    Parse C{description} as a Twisted server endpoint string and return the
    endpoint, which listens on nothing yet.
    """
    # Imported here so that reading a config pulls in no reactor.
    from twisted.internet import endpoints

    class _NoReactor:
        """
        Stands in for the reactor: parsing needs one only to build the
        endpoint, which listens on nothing until C{listen()} is called.
        """

    try:
        return endpoints.serverFromString(_NoReactor(), description)
    # Endpoint parsers are plugins and raise what they like: ValueError for a
    # bad port, OSError for a missing file, OpenSSL errors for a bad key.
    except Exception as error:
        raise ConfigError(
            f"{key}: {description!r} is not a valid Twisted server endpoint "
            f"string ({error}); example: tcp:8888:interface=127.0.0.1"
        ) from None


def _check_http_listen(key: str, description: str, workers: int) -> None:
    """
    Check that C{description}, the endpoint string given by C{key}, is
    valid and that C{workers} processes can share its listening socket.
    """
    from twisted.internet import endpoints

    endpoint = _check_listen(key, description)
    shareable = (
        endpoints.TCP4ServerEndpoint,
        endpoints.TCP6ServerEndpoint,
        endpoints.UNIXServerEndpoint,
    )
    if workers == 1 or isinstance(endpoint, shareable):
        return
    kind = description.partition(":")[0]
    if kind == "ssl":
        fix = "terminate TLS in a reverse proxy and listen on tcp:"
    else:
        fix = "listen on a tcp: or unix: endpoint"
    raise ConfigError(
        f"http.workers: {workers} processes share one listening socket, which "
        f"raps supports for tcp: and unix: endpoints only, not {kind}: in "
        f"{key}; {fix}, or set http.workers = 1"
    )


def _parse_admin(table: dict[str, Any]) -> AdminConfig:
    listen = _take(table, "admin", "listen", str, AdminConfig().listen)
    _reject_unknown(table, "admin")
    if listen:
        _check_listen("admin.listen", listen)
    return AdminConfig(listen=listen)


def _parse_log(table: dict[str, Any]) -> LogConfig:
    default = LogConfig()
    access = _take(table, "log", "access", bool, default.access)
    log_format = _take(table, "log", "format", str, default.format)
    _reject_unknown(table, "log")
    if log_format not in LOG_FORMATS:
        raise ConfigError(
            f'log.format: {log_format!r} is not a log format; use "text" or "json"'
        )
    return LogConfig(access=access, format=log_format)


def parse_config(document: dict[str, Any]) -> Config:
    """
    Validate a parsed TOML document and build a L{Config}, filling in the
    defaults for missing keys.

    @raise ConfigError: for an unknown key, a wrong type or a bad value.
    """
    document = dict(document)
    config = Config(
        http=_parse_http(_section(document, "http")),
        redis=_parse_redis(_section(document, "redis")),
        watch=_parse_watch(_section(document, "watch")),
        task_id=_parse_task_id(_section(document, "task_id")),
        limits=_parse_limits(_section(document, "limits")),
        security=_parse_security(_section(document, "security")),
        admin=_parse_admin(_section(document, "admin")),
        log=_parse_log(_section(document, "log")),
    )
    if document:
        unknown = ", ".join(sorted(document))
        raise ConfigError(
            f"unknown section or key {unknown}: the known sections are "
            "[http], [redis], [watch], [task_id], [limits], [security], [admin] "
            "and [log]"
        )
    _check_http_listen("http.listen", config.http.listen, config.http.workers)
    return config


def load_config(
    path: str | None = None,
    listen: str | None = None,
    redis_url: str | None = None,
) -> Config:
    """
    Read the config file at C{path} (built-in defaults when C{None}) and
    apply the command line overrides.

    @raise ConfigError: when the file is missing, unreadable, not TOML or
        invalid, or when an override is invalid.
    """
    document: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as config_file:
                document = tomllib.load(config_file)
        except OSError as error:
            raise ConfigError(
                f"cannot read config file {path}: {error.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(
                f"config file {path} is not valid TOML: {error}"
            ) from None

    config = parse_config(document)
    if listen is not None:
        _check_http_listen("--listen", listen, config.http.workers)
        config = replace(config, http=replace(config.http, listen=listen))
    if redis_url is not None:
        url = _checked_url("--redis", redis_url)
        old_url = config.redis.url
        options = {key: getattr(old_url, key) for key in _CONNECTION_KEYS}
        url = _with_connection_options("--redis", url, options)
        config = replace(config, redis=replace(config.redis, url=url))
    return config
