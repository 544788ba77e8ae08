"""
Configuration: load_config and parse_config with the defaults, a full file,
every kind of invalid value, and the --listen and --redis overrides.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from redis_ajax_push.config import (
    Config,
    ConfigError,
    HTTPConfig,
    RedisConfig,
    TaskIdConfig,
    WatchConfig,
    load_config,
    parse_config,
)
from redis_ajax_push.redis_url import parse_redis_url
from tests.redis_processes import make_tls_files

FULL_CONFIG = """\
[http]
listen = "tcp:8123:interface=127.0.0.1"
legacy_status_codes = true

[redis]
url = "redis://app:s3cret@127.0.0.1:6380/5"
prefix = "JOBS_"
channels_per_connection = 4
command_timeout = 0.5
subscriber_idle_timeout = 0

[watch]
heartbeat_interval = 2.5

[task_id]
pattern = "[a-z0-9-]+"
max_length = 64
"""


def write_config(tmp_path, text):
    """
    Write C{text} to a config file in C{tmp_path} and return its path.
    """
    path = tmp_path / "raps.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_error(tmp_path, text, **overrides):
    """
    Load C{text} as a config file with the given overrides and return the
    ConfigError message.
    """
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text), **overrides)
    return str(caught.value)


def test_defaults_without_file():
    """
    Without a file and overrides, every setting has its built-in default.
    """
    config = load_config()

    assert config == Config()
    assert config.http.listen == "tcp:8888:interface=127.0.0.1"
    assert config.http.legacy_status_codes is False
    assert config.redis.url == parse_redis_url("redis://127.0.0.1:6379/0")
    assert config.redis.prefix == "RA_"
    assert config.redis.channels_per_connection == 1000
    assert config.redis.command_timeout == 2.0
    assert config.redis.subscriber_idle_timeout == 30.0
    assert config.watch.heartbeat_interval == 10.0
    assert config.task_id.pattern == "[A-Za-z0-9_]+"
    assert config.task_id.max_length == 32


def test_documented_config_is_defaults():
    """
    etc/raps.toml, which lists every key with its default, loads to the
    built-in defaults.
    """
    path = Path(__file__).resolve().parent.parent / "etc" / "raps.toml"

    assert load_config(str(path)) == Config()


def test_empty_file_gives_defaults(tmp_path):
    """
    An empty file, and one with only empty sections, give the defaults.
    """
    empty = write_config(tmp_path, "")

    assert load_config(empty) == Config()
    assert parse_config({"http": {}, "redis": {}, "watch": {}, "task_id": {}}) == (
        Config()
    )


def test_full_file_sets_every_key(tmp_path):
    """
    A file that sets every key yields exactly those values.
    """
    config = load_config(write_config(tmp_path, FULL_CONFIG))

    assert config.http == HTTPConfig(
        listen="tcp:8123:interface=127.0.0.1", legacy_status_codes=True
    )
    assert config.redis == RedisConfig(
        url=parse_redis_url("redis://app:s3cret@127.0.0.1:6380/5"),
        prefix="JOBS_",
        channels_per_connection=4,
        command_timeout=0.5,
        subscriber_idle_timeout=0.0,
    )
    assert config.watch == WatchConfig(heartbeat_interval=2.5)
    assert config.task_id == TaskIdConfig(pattern="[a-z0-9-]+", max_length=64)


def test_partial_section_keeps_other_defaults(tmp_path):
    """
    Keys left out of a section keep their defaults.
    """
    config = load_config(write_config(tmp_path, "[redis]\nprefix = 'X_'\n"))

    assert config.redis.prefix == "X_"
    assert config.redis.url == RedisConfig().url
    assert config.redis.channels_per_connection == 1000
    assert config.http == HTTPConfig()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("redis", "command_timeout"),
        ("redis", "subscriber_idle_timeout"),
        ("watch", "heartbeat_interval"),
    ],
)
def test_integer_seconds_become_float(section, key):
    """
    A number of seconds written as a TOML integer is stored as a float.
    """
    config = parse_config({section: {key: 3}})
    value = getattr(getattr(config, section), key)

    assert value == 3.0
    assert type(value) is float


def test_parse_leaves_document_unchanged():
    """
    parse_config does not modify the document it is given.
    """
    document = {
        "http": {"listen": "tcp:8123:interface=127.0.0.1"},
        "redis": {"prefix": "X_"},
        "watch": {"heartbeat_interval": 1},
        "task_id": {"max_length": 8},
    }
    before = copy.deepcopy(document)

    parse_config(document)

    assert document == before


INVALID_FILES = [
    # Unknown names.
    pytest.param('[http]\nlistne = "tcp:1"\n', "http.listne", id="unknown-http-key"),
    pytest.param("[redis]\nhost = 'x'\n", "redis.host", id="unknown-redis-key"),
    pytest.param("[watch]\ninterval = 1\n", "watch.interval", id="unknown-watch-key"),
    pytest.param("[task_id]\nregex = 'a'\n", "task_id.regex", id="unknown-tid-key"),
    pytest.param("[htpp]\nlisten = 'tcp:1'\n", "htpp", id="unknown-section"),
    pytest.param("listen = 'tcp:1'\n", "listen", id="top-level-key"),
    pytest.param("[http.tls]\ncert = 'a'\n", "http.tls", id="unknown-subtable"),
    pytest.param("http = 'tcp:1'\n", "http", id="section-not-table"),
    # Wrong types.
    pytest.param(
        "[redis]\nchannels_per_connection = '16'\n",
        "redis.channels_per_connection",
        id="string-for-int",
    ),
    pytest.param(
        "[task_id]\nmax_length = true\n", "task_id.max_length", id="bool-for-int"
    ),
    pytest.param(
        "[redis]\nchannels_per_connection = 1.5\n",
        "redis.channels_per_connection",
        id="float-for-int",
    ),
    pytest.param(
        "[watch]\nheartbeat_interval = true\n",
        "watch.heartbeat_interval",
        id="bool-for-number",
    ),
    pytest.param(
        "[redis]\ncommand_timeout = '2'\n",
        "redis.command_timeout",
        id="string-for-number",
    ),
    pytest.param(
        "[http]\nlegacy_status_codes = 1\n",
        "http.legacy_status_codes",
        id="int-for-bool",
    ),
    pytest.param(
        "[http]\nlegacy_status_codes = 'yes'\n",
        "http.legacy_status_codes",
        id="string-for-bool",
    ),
    pytest.param("[http.listen]\nport = 8123\n", "http.listen", id="table-for-string"),
    pytest.param(
        "[redis]\nprefix = { name = 'RA_' }\n", "redis.prefix", id="inline-table"
    ),
    pytest.param("[redis]\nurl = 6380\n", "redis.url", id="int-for-string"),
    pytest.param(
        "[task_id]\npattern = ['a']\n", "task_id.pattern", id="array-for-string"
    ),
    # Endpoint strings.
    pytest.param("[http]\nlisten = 'nonsense:1'\n", "http.listen", id="endpoint-type"),
    pytest.param("[http]\nlisten = 'tcp:notaport'\n", "http.listen", id="word-port"),
    pytest.param("[http]\nlisten = 'tcp'\n", "http.listen", id="endpoint-no-port"),
    pytest.param("[http]\nlisten = ''\n", "http.listen", id="empty-endpoint"),
    pytest.param(
        "[http]\nlisten = 'tcp:8123:bogus=1'\n", "http.listen", id="endpoint-option"
    ),
    pytest.param(
        "[http]\nlisten = 'tcp:8123:backlog=many'\n",
        "http.listen",
        id="endpoint-option-value",
    ),
    # Redis URLs.
    pytest.param(
        "[redis]\nurl = 'http://127.0.0.1:6380/0'\n", "redis.url", id="http-url"
    ),
    pytest.param("[redis]\nurl = 'redis://'\n", "redis.url", id="url-no-host"),
    pytest.param(
        "[redis]\nurl = 'redis://:6380/0'\n", "redis.url", id="url-port-no-host"
    ),
    pytest.param(
        "[redis]\nurl = 'redis://127.0.0.1:notaport/0'\n",
        "redis.url",
        id="url-word-port",
    ),
    pytest.param(
        "[redis]\nurl = 'redis://127.0.0.1:70000/0'\n",
        "redis.url",
        id="url-port-too-big",
    ),
    pytest.param(
        "[redis]\nurl = 'redis://127.0.0.1:6380/zero'\n", "redis.url", id="url-word-db"
    ),
    pytest.param(
        "[redis]\nurl = 'unix:///run/redis.sock?db=x'\n",
        "redis.url",
        id="unix-url-word-db",
    ),
    # Values out of range.
    pytest.param("[task_id]\npattern = '('\n", "task_id.pattern", id="regex-paren"),
    pytest.param("[task_id]\npattern = '[a-z'\n", "task_id.pattern", id="regex-set"),
    pytest.param("[task_id]\npattern = '*'\n", "task_id.pattern", id="regex-repeat"),
    pytest.param("[task_id]\nmax_length = 0\n", "task_id.max_length", id="length-0"),
    pytest.param(
        "[task_id]\nmax_length = -1\n", "task_id.max_length", id="negative-length"
    ),
    pytest.param(
        "[redis]\nchannels_per_connection = 0\n",
        "redis.channels_per_connection",
        id="channels-0",
    ),
    pytest.param(
        "[watch]\nheartbeat_interval = -1\n",
        "watch.heartbeat_interval",
        id="negative-heartbeat",
    ),
    pytest.param(
        "[watch]\nheartbeat_interval = -0.5\n",
        "watch.heartbeat_interval",
        id="negative-float-heartbeat",
    ),
    pytest.param(
        "[redis]\ncommand_timeout = 0\n", "redis.command_timeout", id="timeout-0"
    ),
    pytest.param(
        "[redis]\nsubscriber_idle_timeout = -1\n",
        "redis.subscriber_idle_timeout",
        id="negative-idle-timeout",
    ),
    pytest.param(
        "[redis]\ncommand_timeout = nan\n", "redis.command_timeout", id="nan-timeout"
    ),
    pytest.param(
        "[watch]\nheartbeat_interval = inf\n",
        "watch.heartbeat_interval",
        id="infinite-heartbeat",
    ),
    pytest.param(
        "[task_id]\npattern = '(?u)\\\\w+'\n",
        "task_id.pattern",
        id="regex-unicode-flag",
    ),
    pytest.param(
        "[http]\nlisten = 'ssl:8443:privateKey=/etc/hostname'\n",
        "http.listen",
        id="ssl-bad-key",
    ),
    pytest.param("[http]\nworkers = 0\n", "http.workers", id="workers-0"),
    pytest.param("[http]\nworkers = -1\n", "http.workers", id="negative-workers"),
    pytest.param("[http]\nworkers = 'two'\n", "http.workers", id="string-workers"),
    pytest.param("[http]\nworkers = true\n", "http.workers", id="bool-workers"),
    pytest.param("[http]\nworkers = 1.5\n", "http.workers", id="float-workers"),
    pytest.param("[http]\nworkers = 1000\n", "http.workers", id="too-many-workers"),
    pytest.param("[redis]\nprefix = ''\n", "redis.prefix", id="empty-prefix"),
    pytest.param("[redis]\nprefix = 'RA _'\n", "redis.prefix", id="space-in-prefix"),
]


@pytest.mark.parametrize(("text", "key"), INVALID_FILES)
def test_invalid_file_names_key(tmp_path, text, key):
    """
    An invalid config file raises ConfigError with a one-line message that
    names the offending key.
    """
    message = config_error(tmp_path, text)

    assert key in message
    assert "\n" not in message


def test_unknown_keys_all_named(tmp_path):
    """
    Several unknown keys in one section are all named in one message.
    """
    message = config_error(tmp_path, "[http]\nlistne = 'a'\nport = 1\n")

    assert "http.listne" in message
    assert "http.port" in message
    assert "\n" not in message


def test_non_utf8_file_names_path(tmp_path):
    """
    A config file that is not UTF-8 text raises ConfigError naming the
    path, not a UnicodeDecodeError.
    """
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"\xff\xfe[http]\n")

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))

    assert str(path) in str(caught.value)
    assert "UTF-8" in str(caught.value)


def test_missing_file_names_path(tmp_path):
    """
    A config file that does not exist raises ConfigError naming the path.
    """
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(str(path))

    message = str(caught.value)
    assert str(path) in message
    assert "No such file" in message
    assert "\n" not in message


def test_directory_as_file_names_path(tmp_path):
    """
    A directory given as the config file raises ConfigError naming the path.
    """
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))

    message = str(caught.value)
    assert str(tmp_path) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[http\nlisten = 'a'\n", id="unclosed-table-header"),
        pytest.param("[http]\nlisten = \n", id="missing-value"),
        pytest.param("[http]\nlisten = 'a'\nlisten = 'b'\n", id="duplicate-key"),
        pytest.param("[http]\nlisten = 'a\n", id="unclosed-string"),
        pytest.param("[http]\nlisten = 'a' 'b'\n", id="two-values"),
    ],
)
def test_invalid_toml_names_path(tmp_path, text):
    """
    A file that is not valid TOML raises ConfigError with a one-line message
    naming the path.
    """
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert path in message
    assert "not valid TOML" in message
    assert "\n" not in message


def test_overrides_replace_file_values(tmp_path):
    """
    --listen and --redis replace the file's http.listen and redis.url and
    keep the file's other settings.
    """
    path = write_config(tmp_path, FULL_CONFIG)

    config = load_config(
        path,
        listen="tcp:0:interface=127.0.0.1",
        redis_url="redis://127.0.0.1:6390/7",
    )

    assert config.http.listen == "tcp:0:interface=127.0.0.1"
    assert config.redis.url == parse_redis_url("redis://127.0.0.1:6390/7")
    assert config.http.legacy_status_codes is True
    assert config.redis.prefix == "JOBS_"
    assert config.task_id.max_length == 64


def test_listen_override_alone(tmp_path):
    """
    --listen alone leaves the file's Redis URL in place.
    """
    path = write_config(tmp_path, FULL_CONFIG)

    config = load_config(path, listen=r"tcp:0:interface=\:\:1")

    assert config.http.listen == r"tcp:0:interface=\:\:1"
    assert config.redis.url == parse_redis_url("redis://app:s3cret@127.0.0.1:6380/5")


def test_redis_override_alone(tmp_path):
    """
    --redis alone leaves the file's listen endpoint in place.
    """
    path = write_config(tmp_path, FULL_CONFIG)

    config = load_config(path, redis_url="unix:///run/redis/redis.sock?db=1")

    assert config.http.listen == "tcp:8123:interface=127.0.0.1"
    assert config.redis.url.path == "/run/redis/redis.sock"
    assert config.redis.url.db == 1


def test_overrides_without_file():
    """
    Overrides apply on top of the built-in defaults when no file is given.
    """
    config = load_config(
        listen="tcp:0:interface=127.0.0.1", redis_url="redis://[::1]:6390/0"
    )

    assert config.http.listen == "tcp:0:interface=127.0.0.1"
    assert config.redis.url.host == "::1"
    assert config.redis.url.port == 6390
    assert config.redis.prefix == "RA_"


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        pytest.param({"listen": "nonsense:1"}, "--listen", id="listen-type"),
        pytest.param({"listen": "tcp:notaport"}, "--listen", id="listen-port"),
        pytest.param({"listen": ""}, "--listen", id="listen-empty"),
        pytest.param(
            {"redis_url": "http://127.0.0.1:6380/0"}, "--redis", id="redis-scheme"
        ),
        pytest.param({"redis_url": "redis://"}, "--redis", id="redis-no-host"),
        pytest.param(
            {"redis_url": "redis://127.0.0.1:x/0"}, "--redis", id="redis-bad-port"
        ),
        pytest.param(
            {"redis_url": "redis://127.0.0.1:6380/db"}, "--redis", id="redis-bad-db"
        ),
    ],
)
def test_invalid_override_names_option(tmp_path, overrides, name):
    """
    An invalid override raises ConfigError naming the option, even when the
    file itself is valid.
    """
    message = config_error(tmp_path, FULL_CONFIG, **overrides)

    assert name in message
    assert "\n" not in message


def test_invalid_override_without_file():
    """
    An override is validated when no config file is given too.
    """
    with pytest.raises(ConfigError) as caught:
        load_config(listen="nonsense:1")

    assert "--listen" in str(caught.value)


def test_workers_default_and_value(tmp_path):
    """
    [http] workers defaults to 1 and takes an integer of 1 or more.
    """
    path = write_config(tmp_path, "[http]\nworkers = 4\n")

    assert load_config().http.workers == 1
    assert load_config(path).http.workers == 4


@pytest.mark.parametrize(
    "listen",
    [
        pytest.param("tcp:8123:interface=127.0.0.1", id="tcp"),
        pytest.param("tcp6:8123:interface=\\:\\:1", id="tcp6"),
        pytest.param("unix:/run/raps/raps.sock:mode=660", id="unix"),
    ],
)
def test_workers_share_tcp_and_unix(tmp_path, listen):
    """
    workers above 1 are accepted with tcp:, tcp6: and unix: listen
    addresses, in the file and as --listen.
    """
    text = f"[http]\nworkers = 2\nlisten = '{listen}'\n"

    from_file = load_config(write_config(tmp_path, text))
    overridden = load_config(write_config(tmp_path, "[http]\nworkers = 2\n"), listen)

    assert from_file.http.listen == listen
    assert overridden.http.listen == listen


def test_workers_reject_ssl_listen(tmp_path):
    """
    workers above 1 with an ssl: listen address, in the file or as
    --listen, raise ConfigError naming http.workers and the listen key,
    and pointing to a reverse proxy; workers = 1 serves ssl: as before.
    """
    tls = make_tls_files(tmp_path)
    ssl = (
        f"ssl:8443:interface=127.0.0.1:privateKey={tls.server_key}:"
        f"certKey={tls.server_cert}"
    )

    in_file = config_error(tmp_path, f"[http]\nworkers = 2\nlisten = '{ssl}'\n")
    as_override = config_error(tmp_path, "[http]\nworkers = 3\n", listen=ssl)
    single = load_config(write_config(tmp_path, f"[http]\nlisten = '{ssl}'\n"))

    assert in_file.startswith("http.workers: 2 processes share one listening socket")
    assert "not ssl: in http.listen" in in_file
    assert "reverse proxy" in in_file
    assert "\n" not in in_file
    assert "not ssl: in --listen" in as_override
    assert single.http.listen == ssl
