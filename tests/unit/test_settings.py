"""gateway.settings: refusing unsafe configurations; reading RTGW_* from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.settings import KNOWN_PUBLIC_SECRETS, MIN_SECRET_LENGTH, Settings

GOOD_SECRET = "0123456789abcdef" * 4  # 64 characters, not a published default


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RTGW_* variable and no .env file from the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("RTGW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def refusal(**values: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        settings(**values).check()
    return str(caught.value)


# --- check(): accepted -----------------------------------------------------------------------


def test_good_configuration_is_accepted() -> None:
    config = settings(jwt_secret=GOOD_SECRET)
    config.check()
    assert config.jwt_algorithms == ("HS256", "RS256", "ES256")
    assert config.slot == "rtgw"
    assert config.channels == Path("channels")


def test_jwks_url_alone_is_accepted() -> None:
    settings(jwks_url="https://example.supabase.co/auth/v1/.well-known/jwks.json").check()


def test_secret_of_exactly_the_minimum_length_is_accepted() -> None:
    settings(jwt_secret="k" * MIN_SECRET_LENGTH).check()


@pytest.mark.parametrize("name", ["rtgw", "rtgw_2", "a", "slot_for_tests_01"])
def test_good_slot_and_publication_names(name: str) -> None:
    settings(jwt_secret=GOOD_SECRET, slot=name, publication=name).check()


def test_frame_limits_at_their_bounds_are_accepted() -> None:
    settings(jwt_secret=GOOD_SECRET, max_frame_bytes=1024, max_outbox_bytes=1024).check()


@pytest.mark.parametrize("algorithms", [("HS256",), ("RS256", "ES256"), ()])
def test_supported_algorithms(algorithms: tuple[str, ...]) -> None:
    settings(jwt_secret=GOOD_SECRET, jwt_algorithms=algorithms).check()


# --- check(): refused ------------------------------------------------------------------------


def test_no_secret_and_no_jwks_url() -> None:
    message = refusal()
    assert "RTGW_JWT_SECRET or RTGW_JWKS_URL must be set" in message


def test_empty_secret_and_no_jwks_url() -> None:
    assert "must be set" in refusal(jwt_secret="", jwks_url="")


@pytest.mark.parametrize("secret", sorted(KNOWN_PUBLIC_SECRETS))
def test_well_known_secrets(secret: str) -> None:
    assert "well-known default" in refusal(jwt_secret=secret)
    assert "well-known default" in refusal(jwt_secret=secret.upper())


def test_well_known_long_secret_with_mixed_case() -> None:
    secret = "Your-Super-Secret-JWT-Token-With-At-Least-32-Characters-Long"
    assert len(secret) >= MIN_SECRET_LENGTH
    assert "well-known default" in refusal(jwt_secret=secret)


def test_well_known_secret_even_with_a_jwks_url() -> None:
    assert "well-known" in refusal(jwt_secret="changeme", jwks_url="https://x.example/jwks")


@pytest.mark.parametrize("length", [1, 16, MIN_SECRET_LENGTH - 1])
def test_short_secrets(length: int) -> None:
    message = refusal(jwt_secret="q" * length)
    assert f"at least {MIN_SECRET_LENGTH} characters" in message


@pytest.mark.parametrize(
    ("algorithms", "named"),
    [
        (("HS512",), "HS512"),
        (("HS256", "none"), "none"),
        (("hs256",), "hs256"),
        (("RS256", "PS256", "EdDSA"), "EdDSA"),
    ],
)
def test_unknown_algorithms(algorithms: tuple[str, ...], named: str) -> None:
    message = refusal(jwt_secret=GOOD_SECRET, jwt_algorithms=algorithms)
    assert message.startswith("RTGW_JWT_ALGORITHMS: unsupported")
    assert repr(named) in message


@pytest.mark.parametrize("name", ["RTGW", "rtgw-slot", "rtgw slot", "", "rtgw;drop", "rtgw'x"])
def test_bad_slot_names(name: str) -> None:
    message = refusal(jwt_secret=GOOD_SECRET, slot=name)
    assert message.startswith("RTGW_SLOT must be 1-63 lower-case ASCII letters, digits and _")
    assert repr(name) in message


@pytest.mark.parametrize("name", ["Rtgw", "pub-1", "pub'x", "pub.x"])
def test_bad_publication_names(name: str) -> None:
    message = refusal(jwt_secret=GOOD_SECRET, publication=name)
    assert message.startswith("RTGW_PUBLICATION must be 1-63 lower-case ASCII")
    assert repr(name) in message


@pytest.mark.parametrize("size", [0, 1, 1023])
def test_max_frame_bytes_too_small(size: int) -> None:
    message = refusal(jwt_secret=GOOD_SECRET, max_frame_bytes=size)
    assert "RTGW_MAX_FRAME_BYTES must be >= 1024" in message


def test_max_frame_bytes_above_the_outbox() -> None:
    message = refusal(jwt_secret=GOOD_SECRET, max_frame_bytes=8192, max_outbox_bytes=4096)
    assert "RTGW_MAX_OUTBOX_BYTES" in message


def test_a_roles_cache_that_holds_nobody_is_refused() -> None:
    message = refusal(jwt_secret=GOOD_SECRET, roles_cache_size=0)
    assert message == "RTGW_ROLES_CACHE_SIZE must be >= 1 (a user is cached once read)"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    message = refusal(jwt_secret=GOOD_SECRET, trusted_proxies="10.0.0.0/8,haproxy")
    assert "RTGW_TRUSTED_PROXIES" in message and "'haproxy'" in message
    settings(jwt_secret=GOOD_SECRET, trusted_proxies="10.0.0.0/8, 127.0.0.1,::1").check()


def test_the_redis_bus_takes_either_source_and_needs_a_positive_takeover() -> None:
    settings(jwt_secret=GOOD_SECRET, bus="redis").check()
    settings(jwt_secret=GOOD_SECRET, bus="redis", source="supabase",
             supabase_url="https://x.supabase.co", supabase_service_key="k").check()
    assert "RTGW_TAKEOVER_S" in refusal(jwt_secret=GOOD_SECRET, bus="redis", takeover_s=0)


# --- values from keyword arguments and from the environment ----------------------------------


def test_comma_lists_as_keyword_arguments() -> None:
    config = settings(
        jwt_algorithms="HS256, RS256",
        allowed_origins="https://a.example,https://b.example,",
        scope_claims="scope",
    )
    assert config.jwt_algorithms == ("HS256", "RS256")
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.scope_claims == ("scope",)


def test_tuples_as_keyword_arguments() -> None:
    config = settings(jwt_algorithms=["ES256"], allowed_origins=("*",))
    assert config.jwt_algorithms == ("ES256",)
    assert config.allowed_origins == ("*",)


def test_scalars_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("RTGW_PORT", "9001")
    monkeypatch.setenv("RTGW_SLOT", "my_slot")
    monkeypatch.setenv("RTGW_CHANNELS", "/etc/rtgw/channels")
    config = settings()
    assert config.jwt_secret == GOOD_SECRET
    assert config.port == 9001
    assert config.slot == "my_slot"
    assert config.channels == Path("/etc/rtgw/channels")
    config.check()


def test_comma_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_JWT_ALGORITHMS", "HS256,RS256")
    monkeypatch.setenv("RTGW_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("RTGW_SCOPE_CLAIMS", "scope")
    config = settings()
    assert config.jwt_algorithms == ("HS256", "RS256")
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.scope_claims == ("scope",)


def test_empty_secret_next_to_a_jwks_url_counts_as_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTGW_JWT_SECRET", "")
    monkeypatch.setenv("RTGW_JWKS_URL", "https://example.com/jwks.json")
    config = settings()
    assert config.jwt_secret is None
    config.check()


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTGW_SLOT", "from_env")
    assert settings(slot="from_kwargs").slot == "from_kwargs"


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text(f"RTGW_JWT_SECRET={GOOD_SECRET}\nRTGW_HISTORY_SIZE=7\nOTHER=1\n")
    config = Settings(_env_file=env_file)
    assert config.jwt_secret == GOOD_SECRET
    assert config.history_size == 7
    config.check()


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="source"):
        settings(source="mysql")


@pytest.mark.parametrize("name", ["history_size", "history_total", "history_age_s"])
def test_negative_history_bounds(name: str) -> None:
    message = refusal(jwt_secret=GOOD_SECRET, **{name: -1})
    assert message == f"RTGW_{name.upper()} must be >= 0 (0 keeps no history)"
    settings(jwt_secret=GOOD_SECRET, **{name: 0}).check()


def test_a_shared_cache_needs_the_postgres_source() -> None:
    message = refusal(jwt_secret=GOOD_SECRET, cache="redis", source="supabase",
                      supabase_url="https://x.supabase.co", supabase_service_key="k")
    assert message.startswith("RTGW_CACHE=redis needs RTGW_SOURCE=postgres")
    settings(jwt_secret=GOOD_SECRET, cache="redis").check()


@pytest.mark.parametrize("name", ["enrich_batch_max", "enrich_ttl_s"])
def test_enrichment_bounds_must_be_positive(name: str) -> None:
    assert refusal(jwt_secret=GOOD_SECRET, **{name: 0}).startswith("RTGW_ENRICH_BATCH_MAX")


def test_task_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings().webhook_retry_s == (60, 300, 1800, 7200, 21600)
    monkeypatch.setenv("RTGW_SLOT", "orders_slot")
    monkeypatch.setenv("RTGW_WEBHOOK_RETRY_S", "5, 60,3600")
    monkeypatch.setenv("RTGW_WEBHOOK_ALLOW_PRIVATE", "true")
    config = Settings(_env_file=None)
    assert config.queue_name == "orders_slot"  # RTGW_TASK_QUEUE unset: the slot's name
    assert config.webhook_retry_s == (5, 60, 3600)
    assert config.webhook_allow_private is True
    monkeypatch.setenv("RTGW_TASK_QUEUE", "receipts")
    monkeypatch.setenv("RTGW_WEBHOOK_RETRY_S", "")
    config = Settings(_env_file=None)
    assert config.queue_name == "receipts" and config.webhook_retry_s == ()  # no retry


def test_bad_task_settings() -> None:
    assert "RTGW_TASK_QUEUE" in refusal(jwt_secret=GOOD_SECRET, task_queue="a queue")
    assert "RTGW_WEBHOOK_RETRY_S" in refusal(jwt_secret=GOOD_SECRET, webhook_retry_s=(60, -1))
    assert "RTGW_WEBHOOK_TIMEOUT_S" in refusal(jwt_secret=GOOD_SECRET, webhook_timeout_s=0)
    with pytest.raises(ValueError, match="comma-separated whole seconds"):
        settings(webhook_retry_s="1m,5m")
