"""
Signed task ids: the signer of signing.py and the helpers of publisher.py.
"""

from __future__ import annotations

import re

import pytest

from redis_ajax_push.config import TaskIdConfig
from redis_ajax_push.publisher import (
    InvalidTaskIdError,
    make_signer,
    mint_task_id,
    sign_task_id,
    verify_task_id,
)
from redis_ajax_push.signing import (
    TAG_LENGTH,
    TaskIdSigner,
    mint_unsigned,
    redact,
    split_signed_id,
)

NEW = b"new-secret-0123456789abcdef"
OLD = b"old-secret-0123456789abcdef"
TAG = re.compile(r"[a-z2-7]{26}")


def flip_last(text):
    """
    Return C{text} with its last character replaced by another of the tag
    alphabet.
    """
    return text[:-1] + ("a" if text[-1] != "a" else "b")


def test_sign_appends_tag():
    """
    sign returns the base, an underscore and a 26-character base32 tag.
    """
    signed = TaskIdSigner([NEW]).sign("job1")

    base, separator, tag = signed.rpartition("_")
    assert (base, separator) == ("job1", "_")
    assert TAG.fullmatch(tag)


@pytest.mark.parametrize("base", ["a", "job_1", "x" * 32, "ABC123"])
def test_tag_length_constant(base):
    """
    The tag has the same length and alphabet whatever the base.
    """
    tag = TaskIdSigner([NEW]).sign(base)[len(base) + 1 :]

    assert len(tag) == TAG_LENGTH
    assert TAG.fullmatch(tag)


def test_sign_is_deterministic():
    """
    The same secret and base always give the same id, and another secret
    another one.
    """
    assert TaskIdSigner([NEW]).sign("job1") == TaskIdSigner([NEW]).sign("job1")
    assert TaskIdSigner([NEW]).sign("job1") != TaskIdSigner([OLD]).sign("job1")


def test_verify_accepts_signed():
    """
    verify accepts an id signed with the secret.
    """
    signer = TaskIdSigner([NEW])

    assert signer.verify(signer.sign("job1"))


def test_verify_rejects_tampered_tag():
    """
    verify rejects an id whose tag was changed in one character.
    """
    signer = TaskIdSigner([NEW])

    assert not signer.verify(flip_last(signer.sign("job1")))


def test_verify_rejects_other_base():
    """
    verify rejects a valid tag moved to another base.
    """
    signer = TaskIdSigner([NEW])
    tag = signer.sign("job1").rpartition("_")[2]

    assert not signer.verify(f"job2_{tag}")


@pytest.mark.parametrize("task_id", ["job1", "", "_", "job1_", "job1_ABC", "a" * 27])
def test_verify_rejects_unsigned(task_id):
    """
    verify rejects ids that do not have the shape of a signed id.
    """
    assert not TaskIdSigner([NEW]).verify(task_id)


def test_verify_rejects_other_secret():
    """
    verify rejects an id signed with a secret it does not have.
    """
    assert not TaskIdSigner([NEW]).verify(TaskIdSigner([OLD]).sign("job1"))


def test_rotation_signs_first_verifies_all():
    """
    With secrets [new, old], ids are signed with new, and ids signed with
    either verify.
    """
    rotated = TaskIdSigner([NEW, OLD])

    assert rotated.sign("job1") == TaskIdSigner([NEW]).sign("job1")
    assert rotated.verify(TaskIdSigner([OLD]).sign("job1"))
    assert rotated.verify(TaskIdSigner([NEW]).sign("job1"))


def test_signer_needs_secret():
    """
    A signer without secrets raises ValueError.
    """
    with pytest.raises(ValueError, match="at least one secret"):
        TaskIdSigner([])


def test_signer_repr_hides_secrets():
    """
    The repr of a signer shows the number of secrets, not the secrets.
    """
    text = repr(TaskIdSigner([NEW, OLD]))

    assert "2 secret" in text
    assert NEW.decode() not in text


def test_mint_unsigned_shape():
    """
    mint_unsigned returns 26 lowercase base32 characters, new each time.
    """
    minted = {mint_unsigned() for _ in range(100)}

    assert len(minted) == 100
    assert all(TAG.fullmatch(task_id) for task_id in minted)


def test_mint_signed_verifies():
    """
    A minted id is a random base with a valid tag.
    """
    signer = TaskIdSigner([NEW])
    minted = signer.mint()

    assert signer.verify(minted)
    assert split_signed_id(minted) is not None
    assert len(minted) == 26 + 1 + TAG_LENGTH


@pytest.mark.parametrize(
    ("task_id", "expected"),
    [
        ("job1_" + "a" * 26, ("job1", "a" * 26)),
        ("a_b_" + "2" * 26, ("a_b", "2" * 26)),
        ("job1", None),
        ("_" + "a" * 26, None),
        ("job1_" + "a" * 25, None),
        ("job1_" + "a" * 27, None),
        ("job1_" + "A" * 26, None),
        ("job1_" + "1" * 26, None),
    ],
)
def test_split_signed_id(task_id, expected):
    """
    split_signed_id returns the base and tag only for the shape of a
    signed id.
    """
    assert split_signed_id(task_id) == expected


def test_redact_replaces_tags():
    """
    redact replaces the tag in an id, a data key, a channel and a path.
    """
    signed = TaskIdSigner([NEW]).sign("job1")

    assert redact(signed) == "job1_..."
    assert redact(f"RA_D_{signed}") == "RA_D_job1_..."
    assert redact(f"RA_SC_{signed}") == "RA_SC_job1_..."
    assert redact(f'"GET /task/{signed}?watch HTTP/1.1"') == (
        '"GET /task/job1_...?watch HTTP/1.1"'
    )


def test_redact_keeps_unsigned():
    """
    redact leaves text without a tag unchanged.
    """
    text = "GET /task/job_1?watch from 127.0.0.1"

    assert redact(text) == text


def test_helpers_accept_text_secrets():
    """
    The helpers take secrets as text or bytes and agree with the signer.
    """
    signed = sign_task_id("job1", [NEW.decode()])

    assert signed == TaskIdSigner([NEW]).sign("job1")
    assert verify_task_id(signed, [NEW])
    assert verify_task_id(signed, [OLD.decode(), NEW.decode()])
    assert not verify_task_id(flip_last(signed), [NEW])


def test_mint_task_id_signed_or_not():
    """
    mint_task_id signs with the first secret when given secrets, and
    returns a bare random id without.
    """
    assert verify_task_id(mint_task_id([NEW, OLD]), [NEW])
    assert TAG.fullmatch(mint_task_id())


@pytest.mark.parametrize("secrets", [[], ["short"], [NEW, b"x" * 15]])
def test_helpers_reject_bad_secrets(secrets):
    """
    The helpers reject an empty list and secrets under 16 bytes, as the
    daemon's config does.
    """
    with pytest.raises(ValueError):
        make_signer(secrets)


def test_sign_rejects_invalid_base():
    """
    sign_task_id rejects a base that the task id rule rejects, so that it
    never makes an id the daemon refuses.
    """
    with pytest.raises(InvalidTaskIdError):
        sign_task_id("a b", [NEW])
    with pytest.raises(InvalidTaskIdError):
        sign_task_id("x" * 33, [NEW])
    assert sign_task_id("a-b", [NEW], TaskIdConfig(pattern="[a-z-]+"))
