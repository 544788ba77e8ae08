"""
Redis URLs: parse_redis_url for redis:// and unix:// addresses, its errors,
and the credential-free text that RedisURL.__str__ returns for logs.
"""

from __future__ import annotations

import pytest

from redis_ajax_push.redis_url import RedisURL, RedisURLError, parse_redis_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "redis://127.0.0.1:6380/3",
            RedisURL(host="127.0.0.1", port=6380, db=3),
            id="host-port-db",
        ),
        pytest.param(
            "redis://localhost",
            RedisURL(host="localhost", port=6379, db=0),
            id="default-port-and-db",
        ),
        pytest.param(
            "redis://127.0.0.1:6380/",
            RedisURL(host="127.0.0.1", port=6380, db=0),
            id="empty-db-path",
        ),
        pytest.param(
            "redis://127.0.0.1:6380/15",
            RedisURL(host="127.0.0.1", port=6380, db=15),
            id="two-digit-db",
        ),
        pytest.param(
            "redis://[::1]:6380/2",
            RedisURL(host="::1", port=6380, db=2),
            id="ipv6-loopback",
        ),
        pytest.param(
            "redis://[::1]",
            RedisURL(host="::1", port=6379, db=0),
            id="ipv6-default-port",
        ),
        pytest.param(
            "unix:///run/redis/redis.sock?db=2",
            RedisURL(host=None, path="/run/redis/redis.sock", db=2),
            id="unix-with-db",
        ),
        pytest.param(
            "unix:///run/redis/redis.sock",
            RedisURL(host=None, path="/run/redis/redis.sock", db=0),
            id="unix-default-db",
        ),
    ],
)
def test_parse_valid_url(text, expected):
    """
    A valid URL yields the host or socket path, port and database it names,
    with the defaults (port 6379, database 0) for the parts it leaves out.
    """
    assert parse_redis_url(text) == expected


def test_parse_user_and_password():
    """
    The user name and password come out percent-decoded.
    """
    url = parse_redis_url("redis://app%20user:p%40ss%3Aw%2Frd@127.0.0.1:6380/1")

    assert url.username == "app user"
    assert url.password == "p@ss:w/rd"
    assert url.host == "127.0.0.1"
    assert url.port == 6380
    assert url.db == 1


def test_parse_password_without_user():
    """
    redis://:password@host sets the password and leaves the user name unset.
    """
    url = parse_redis_url("redis://:s3cret@127.0.0.1:6380/0")

    assert url.username is None
    assert url.password == "s3cret"


def test_parse_no_credentials():
    """
    A URL without credentials leaves both the user name and password unset.
    """
    url = parse_redis_url("redis://127.0.0.1:6380/0")

    assert url.username is None
    assert url.password is None


def test_parse_unix_credentials():
    """
    A unix:// URL carries credentials in the authority before the path.
    """
    url = parse_redis_url("unix://app:s3cret@/run/redis/redis.sock?db=4")

    assert url.username == "app"
    assert url.password == "s3cret"
    assert url.path == "/run/redis/redis.sock"
    assert url.host is None
    assert url.db == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("http://127.0.0.1:6380/0", "unsupported scheme", id="http"),
        pytest.param("rediss://", "no host", id="tls-no-host"),
        pytest.param("rediss://127.0.0.1/0?ca=x", "query string", id="tls-query"),
        pytest.param("127.0.0.1:6380", "unsupported scheme", id="no-scheme"),
        pytest.param("", "unsupported scheme", id="empty"),
        pytest.param("redis://", "no host", id="no-host"),
        pytest.param("redis://:6380/0", "no host", id="port-without-host"),
        pytest.param("redis://127.0.0.1:notaport/0", "invalid port", id="word-port"),
        pytest.param("redis://127.0.0.1:70000/0", "invalid port", id="port-too-big"),
        pytest.param("redis://127.0.0.1:6380/abc", "'abc'", id="word-db"),
        pytest.param("redis://127.0.0.1:6380/-1", "'-1'", id="negative-db"),
        pytest.param("redis://127.0.0.1:6380/0/1", "'0/1'", id="nested-db-path"),
        pytest.param("redis://127.0.0.1:0/0", "invalid port", id="port-zero"),
        pytest.param("redis://127.0.0.1:6380/\u0663", "'\u0663'", id="arabic-db"),
        pytest.param("redis://127.0.0.1:6380/0?db=5", "query string", id="query"),
        pytest.param("unix://", "no socket path", id="unix-no-path"),
        pytest.param("unix:///run/redis.sock?db=x", "'x'", id="unix-word-db"),
    ],
)
def test_parse_invalid_url(text, fragment):
    """
    An unusable URL raises RedisURLError, a ValueError, whose one-line
    message names the part that is wrong.
    """
    with pytest.raises(RedisURLError) as caught:
        parse_redis_url(text)

    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    [
        "redis://app:s3cret-pw@127.0.0.1:6380/1",
        "redis://:s3cret-pw@127.0.0.1:6380/1",
        "redis://app:s3cret-pw@[::1]:6380/1",
        "rediss://app:s3cret-pw@127.0.0.1:6380/1",
        "unix://app:s3cret-pw@/run/redis/redis.sock?db=2",
    ],
)
def test_str_omits_password(text):
    """
    str() of a URL with a password, the text that goes into logs, contains
    neither the password nor the user name.
    """
    text_for_logs = str(parse_redis_url(text))

    assert "s3cret-pw" not in text_for_logs
    assert "app" not in text_for_logs
    assert "@" not in text_for_logs


def test_str_omits_encoded_password():
    """
    str() contains neither the decoded nor the percent-encoded password.
    """
    text_for_logs = str(parse_redis_url("redis://:p%40ss%3Aword@127.0.0.1:6380/0"))

    assert "p@ss:word" not in text_for_logs
    assert "p%40ss%3Aword" not in text_for_logs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://127.0.0.1:6380/3", "redis://127.0.0.1:6380/3"),
        ("redis://localhost", "redis://localhost:6379/0"),
        ("redis://[::1]:6380/2", "redis://[::1]:6380/2"),
        ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock?db=0"),
    ],
)
def test_str_is_canonical_url(text, expected):
    """
    str() spells out the port and database, brackets an IPv6 host, and
    parses back to the same address.
    """
    url = parse_redis_url(text)

    assert str(url) == expected
    assert parse_redis_url(str(url)) == url


def test_repr_omits_password():
    """
    repr() of a parsed URL, as shown in tracebacks and {url!r} log fields,
    does not contain the password.
    """
    url = parse_redis_url("redis://app:s3cret@127.0.0.1:6380/0")

    assert "s3cret" not in repr(url)


def test_parse_tls_url():
    """
    A rediss:// URL sets tls and otherwise parses like a redis:// one.
    """
    url = parse_redis_url("rediss://app:s3cret@127.0.0.1:6380/3")

    assert url.tls is True
    assert url.host == "127.0.0.1"
    assert url.port == 6380
    assert url.db == 3
    assert url.username == "app"
    assert url.password == "s3cret"
    assert str(url) == "rediss://127.0.0.1:6380/3"


def test_plain_url_without_tls():
    """
    A redis:// URL leaves tls off.
    """
    assert parse_redis_url("redis://127.0.0.1:6380/0").tls is False
