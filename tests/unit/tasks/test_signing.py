"""gateway.tasks.signing: Standard Webhooks v1 signatures and whsec_ secrets."""

from __future__ import annotations

import base64

import pytest

from gateway.errors import ConfigError
from gateway.tasks.signing import secret_key, signature, signed_headers

# The specification's published test vector (its reference libraries test against it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specifications_test_vector() -> None:
    key = secret_key(VECTOR_SECRET)
    assert signature(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_headers_carry_id_timestamp_and_signature() -> None:
    headers = signed_headers(secret_key(VECTOR_SECRET), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_any_change_changes_the_signature() -> None:
    key = secret_key(VECTOR_SECRET)
    signatures = {
        signature(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
        signature(key, VECTOR_ID + "x", VECTOR_TIMESTAMP, VECTOR_BODY),
        signature(key, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY),
        signature(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY + b" "),
    }
    assert len(signatures) == 4


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),  # shorter than 24 bytes
        "whsec_" + base64.b64encode(b"x" * 65).decode(),  # longer than 64 bytes
    ],
)
def test_bad_secrets_are_refused_with_the_fix(secret: str) -> None:
    with pytest.raises(ConfigError, match="RTGW_WEBHOOK_SECRET must be whsec_"):
        secret_key(secret)
