"""
Signed task ids: an id that carries an HMAC tag, so that only holders of a
secret can make ids the daemon accepts.

A signed id is C{<base>_<tag>}. The base is any valid task id; the tag is
the first 128 bits of HMAC-SHA256(secret, "raps-task-id:" + base), written
in lowercase base32 without padding (26 characters of C{a-z2-7}). Both parts
stay within the default id alphabet of ASCII letters, digits and C{_}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis_ajax_push.config import Config

TAG_BYTES = 16
TAG_LENGTH = 26  # len(base32(16 bytes)) without the "======" padding
SEPARATOR = "_"
_DOMAIN = b"raps-task-id:"
_TAG_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def _tag(secret: bytes, base: str) -> str:
    digest = hmac.new(secret, _DOMAIN + base.encode("utf-8"), hashlib.sha256).digest()
    return base64.b32encode(digest[:TAG_BYTES]).decode("ascii").rstrip("=").lower()


def split_signed_id(task_id: str) -> tuple[str, str] | None:
    """
    Split a signed id into its base and tag, or return C{None} when it does
    not have the shape of one.
    """
    base, separator, tag = task_id.rpartition(SEPARATOR)
    if not separator or not base or len(tag) != TAG_LENGTH:
        return None
    if not _TAG_ALPHABET.issuperset(tag):
        return None
    return base, tag


class TaskIdSigner:
    """
    Signs task ids with the first secret and verifies them against all of
    them, so that a new secret can be put first while ids signed with the
    older ones stay valid.
    """

    def __init__(self, task_id_secrets: Sequence[bytes]) -> None:
        if not task_id_secrets:
            raise ValueError("at least one secret is needed")
        self._secrets = tuple(task_id_secrets)

    def __repr__(self) -> str:
        return f"<TaskIdSigner with {len(self._secrets)} secret(s)>"

    def sign(self, base: str) -> str:
        """
        Return C{base} with its tag appended.
        """
        return f"{base}{SEPARATOR}{_tag(self._secrets[0], base)}"

    def verify(self, task_id: str) -> bool:
        """
        Tell whether C{task_id} carries a valid tag under any secret.

        Every secret is tried and the tags are compared in constant time, so
        the time taken does not tell which part of a forged tag was right.
        """
        parts = split_signed_id(task_id)
        if parts is None:
            return False
        base, tag = parts
        valid = False
        for secret in self._secrets:
            valid |= hmac.compare_digest(_tag(secret, base), tag)
        return valid

    def mint(self) -> str:
        """
        Return a new random task id, signed: 128 random bits as a base of 26
        characters, then the tag.
        """
        return self.sign(mint_unsigned())


def signer_for(config: Config) -> TaskIdSigner | None:
    """
    Return the signer for a daemon config, or C{None} when it sets no
    secrets and ids are not signed.
    """
    task_id_secrets = config.security.task_id_secrets
    return TaskIdSigner(task_id_secrets) if task_id_secrets else None


def mint_unsigned() -> str:
    """
    Return a new random task id of 128 bits as 26 lowercase base32
    characters, without a tag.
    """
    raw = secrets.token_bytes(16)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


_TAG_IN_TEXT = re.compile(rf"{SEPARATOR}[a-z2-7]{{{TAG_LENGTH}}}(?![a-z2-7])")


def redact(text: str) -> str:
    """
    Return C{text} with every signature tag replaced by C{...}, fit for
    logs: a task id, a data key, a channel name or a request path.
    """
    return _TAG_IN_TEXT.sub(f"{SEPARATOR}...", text)
