"""
The [redis] keys that go with the URL: the TLS files tls_ca, tls_cert and
tls_key, and the Sentinel keys sentinels and sentinel_service.
"""

from __future__ import annotations

import pytest

from redis_ajax_push.config import ConfigError, load_config, parse_config
from tests.redis_processes import make_tls_files


@pytest.fixture
def tls_files(tmp_path):
    return make_tls_files(tmp_path)


def redis_error(redis_table):
    with pytest.raises(ConfigError) as caught:
        parse_config({"redis": redis_table})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_tls_files_attach_to_url(tls_files):
    """
    The TLS file keys end up on the rediss:// URL that the connections use.
    """
    config = parse_config(
        {
            "redis": {
                "url": "rediss://127.0.0.1:6380/1",
                "tls_ca": str(tls_files.ca),
                "tls_cert": str(tls_files.client_cert),
                "tls_key": str(tls_files.client_key),
            }
        }
    )

    assert config.redis.url.tls is True
    assert config.redis.url.tls_ca == str(tls_files.ca)
    assert config.redis.url.tls_cert == str(tls_files.client_cert)
    assert config.redis.url.tls_key == str(tls_files.client_key)


def test_tls_files_need_rediss(tls_files):
    """
    TLS files with a redis:// URL are rejected with a hint to use rediss://.
    """
    message = redis_error(
        {"url": "redis://127.0.0.1:6380/0", "tls_ca": str(tls_files.ca)}
    )

    assert "rediss://" in message


def test_missing_tls_file(tmp_path):
    """
    A TLS file that cannot be read is rejected at startup, naming the key.
    """
    missing = tmp_path / "missing.pem"
    message = redis_error({"url": "rediss://127.0.0.1/0", "tls_ca": str(missing)})

    assert message.startswith("redis.tls_ca:")
    assert str(missing) in message


def test_tls_file_not_pem(tmp_path):
    """
    A readable file that contains no PEM certificate is rejected at startup.
    """
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    message = redis_error({"url": "rediss://127.0.0.1/0", "tls_ca": str(bogus)})

    assert "cannot load the TLS files" in message


def test_tls_cert_without_key(tls_files):
    """
    A client certificate without its key is rejected.
    """
    message = redis_error(
        {"url": "rediss://127.0.0.1/0", "tls_cert": str(tls_files.client_cert)}
    )

    assert "set both" in message


def test_tls_key_not_matching(tls_files, tmp_path):
    """
    A client key that does not belong to the client certificate is rejected.
    """
    message = redis_error(
        {
            "url": "rediss://127.0.0.1/0",
            "tls_cert": str(tls_files.client_cert),
            "tls_key": str(tls_files.server_key),
        }
    )

    assert "cannot load the TLS files" in message


def test_redis_override_keeps_tls_files(tls_files, tmp_path):
    """
    --redis replaces the URL but keeps the file's TLS keys.
    """
    path = tmp_path / "raps.toml"
    path.write_text(
        f'[redis]\nurl = "rediss://127.0.0.1:6380/0"\ntls_ca = "{tls_files.ca}"\n'
    )
    config = load_config(str(path), redis_url="rediss://127.0.0.1:6390/2")

    assert config.redis.url.port == 6390
    assert config.redis.url.tls_ca == str(tls_files.ca)


def test_redis_override_plain_with_tls_files(tls_files, tmp_path):
    """
    --redis with a redis:// URL while the file sets TLS keys is rejected.
    """
    path = tmp_path / "raps.toml"
    path.write_text(
        f'[redis]\nurl = "rediss://127.0.0.1:6380/0"\ntls_ca = "{tls_files.ca}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), redis_url="redis://127.0.0.1:6390/2")

    assert str(caught.value).startswith("--redis:")


def test_sentinels_parse():
    """
    Sentinel addresses, IPv6 ones in brackets, and the service name end up
    on the URL.
    """
    config = parse_config(
        {
            "redis": {
                "url": "redis://:pw@sentinel-managed/4",
                "sentinels": ["127.0.0.1:26380", "[::1]:26381"],
                "sentinel_service": "mymaster",
            }
        }
    )

    url = config.redis.url
    assert url.sentinels == (("127.0.0.1", 26380), ("::1", 26381))
    assert url.sentinel_service == "mymaster"
    assert url.db == 4
    assert url.password == "pw"


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        pytest.param("127.0.0.1", "not a Sentinel address", id="no-port"),
        pytest.param(":26380", "not a Sentinel address", id="no-host"),
        pytest.param("::1:26380", "not a Sentinel address", id="ipv6-no-brackets"),
        pytest.param("127.0.0.1:port", "invalid port", id="word-port"),
        pytest.param("127.0.0.1:70000", "invalid port", id="port-too-big"),
        pytest.param("127.0.0.1:0", "invalid port", id="port-zero"),
    ],
)
def test_invalid_sentinel_address(entry, fragment):
    """
    An unusable Sentinel address is rejected, naming the entry.
    """
    message = redis_error({"sentinels": [entry], "sentinel_service": "mymaster"})

    assert message.startswith("redis.sentinels[0]:")
    assert fragment in message


def test_sentinels_without_service():
    """
    Sentinel addresses without a service name are rejected.
    """
    message = redis_error({"sentinels": ["127.0.0.1:26380"]})

    assert "set both" in message


def test_service_without_sentinels():
    """
    A service name without Sentinel addresses is rejected.
    """
    message = redis_error({"sentinel_service": "mymaster"})

    assert "set both" in message


def test_blank_sentinel_service():
    """
    A service name with whitespace is rejected.
    """
    message = redis_error(
        {"sentinels": ["127.0.0.1:26380"], "sentinel_service": "my master"}
    )

    assert message.startswith("redis.sentinel_service:")


def test_sentinels_with_unix_url():
    """
    Sentinel with a unix:// URL is rejected: Sentinel reports TCP addresses.
    """
    message = redis_error(
        {
            "url": "unix:///run/redis.sock",
            "sentinels": ["127.0.0.1:26380"],
            "sentinel_service": "mymaster",
        }
    )

    assert "redis:// or rediss://" in message


def test_sentinel_url_text_for_logs():
    """
    str() of a Sentinel URL names the service, the Sentinels and the
    database, and leaves the password out.
    """
    config = parse_config(
        {
            "redis": {
                "url": "rediss://:s3cret-pw@unused/4",
                "sentinels": ["127.0.0.1:26380", "[::1]:26381"],
                "sentinel_service": "mymaster",
            }
        }
    )

    text = str(config.redis.url)
    assert text == (
        "master mymaster of Sentinels 127.0.0.1:26380, [::1]:26381 (rediss, db 4)"
    )
    assert "s3cret-pw" not in text
