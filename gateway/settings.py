"""Configuration: environment variables with the ``RTGW_`` prefix, or a ``.env`` file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.errors import ConfigError
from gateway.limits import ProxySet

# Secrets that appear in docs and templates; a gateway configured with one is not secure.
KNOWN_PUBLIC_SECRETS = frozenset(
    {
        "secret",
        "changeme",
        "change-me",
        "your-super-secret-jwt-token-with-at-least-32-characters-long",
        "super-secret-jwt-token-with-at-least-32-characters-long",
    }
)
MIN_SECRET_LENGTH = 32
_PG_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Read from the environment as "a,b,c" (not JSON).
CommaList = Annotated[tuple[str, ...], NoDecode]
Delays = Annotated[tuple[int, ...], NoDecode]
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class Settings(BaseSettings):
    """Every knob of the gateway. Built once in the app factory; never read globally."""

    model_config = SettingsConfigDict(env_prefix="RTGW_", env_file=".env", extra="ignore")

    database_url: str | None = None  # unset: an embedded Postgres
    source: Literal["postgres", "supabase"] = "postgres"
    slot: str = "rtgw"
    slot_mode: Literal["persistent", "temporary"] = "persistent"
    publication: str = "rtgw"
    channels: Path = Path("channels")

    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_audience: str | None = "authenticated"
    jwt_algorithms: CommaList = ("HS256", "RS256", "ES256")
    scope_claims: CommaList = ("scope", "app_metadata.scopes")

    host: str = "127.0.0.1"
    port: int = 8000
    allowed_origins: CommaList = ()
    trusted_proxies: CommaList = ()  # addresses/networks whose X-Forwarded-For is believed

    sse_query_token_max_ttl_s: float = 300.0
    publish_scope: str = "rtgw:publish"
    max_publish_bytes: int = 64 * 1024
    max_publish_batch: int = 1000  # events in one POST /v1/publish/batch
    max_publish_batch_bytes: int = 1024 * 1024
    max_frame_bytes: int = 64 * 1024
    max_outbox_bytes: int = 4 * 1024 * 1024
    max_subscriptions: int = 100
    max_messages_per_s: float = 20.0
    max_connections_per_ip: int = 256
    max_head_bytes: int = 16 * 1024  # a request's line and headers, in total
    max_head_line_bytes: int = 8 * 1024  # one header line (or the request line)
    max_head_lines: int = 100
    head_timeout_s: float = 5.0  # for a request's line and headers to arrive
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    auth_timeout_s: float = 10.0
    history_size: int = 1000
    history_total: int = 100_000
    history_age_s: float = 300.0
    enrich_cache_size: int = 100_000  # looked-up rows kept (channels' [enrich] lookups)
    enrich_ttl_s: float = 300.0  # how long a looked-up row is trusted without a change seen
    enrich_batch_max: int = 100_000  # changes of one transaction looked up together
    cache: Literal["memory", "redis"] = "memory"  # where looked-up rows are cached
    cache_prefix: str = "rtgw:cache"  # RTGW_CACHE=redis: the keys' prefix
    roles_cache_size: int = 100_000  # users whose roles ([roles]) are kept, least recently used out
    redis_url: str = "redis://127.0.0.1:6379/0"  # the bus, the shared cache and tasks' queues
    task_queue: str | None = None  # the RQ queue of the channels' tasks; unset: RTGW_SLOT
    webhook_secret: str | None = None  # whsec_ + base64: signs webhook deliveries
    webhook_retry_s: Delays = (60, 300, 1800, 7200, 21600)  # delays between attempts (jittered)
    webhook_allow_private: bool = False  # allow targets on loopback, private, link-local nets
    webhook_timeout_s: float = 15.0  # one delivery attempt, per socket operation
    bus: Literal["memory", "redis"] = "memory"  # redis: several gateways, one slot owner
    takeover_s: float = 5.0  # redis bus: a standby takes the slot (or lease) within this

    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = 10.0
    api_key: str | None = None  # the Supabase-compatible endpoint's `apikey`; unset: endpoint off
    idle_timeout_s: float = 60.0  # Supabase-compatible endpoint: close a silent socket
    supabase_url: str | None = None  # RTGW_SOURCE=supabase: https://<ref>.supabase.co
    supabase_service_key: str | None = None  # RTGW_SOURCE=supabase: the service-role key

    @field_validator(
        "jwt_secret", "jwks_url", "jwt_audience", "database_url", "api_key", "supabase_url",
        "supabase_service_key", "task_queue", "webhook_secret", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "jwt_algorithms", "scope_claims", "allowed_origins", "trusted_proxies", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_retry_s", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError("comma-separated whole seconds, like 60,300,1800") from None
        return value

    @property
    def queue_name(self) -> str:
        """The RQ queue the channels' tasks go to (and ``rtgw worker`` takes them from)."""
        return self.task_queue or self.slot

    def check(self) -> None:
        """Refuse configurations that cannot be safe. Raises ``ConfigError``."""
        if not self.jwt_secret and not self.jwks_url:
            raise ConfigError(
                "RTGW_JWT_SECRET or RTGW_JWKS_URL must be set (or run `rtgw demo`, "
                "which generates a development secret)"
            )
        if self.jwt_secret is not None:
            if self.jwt_secret.lower() in KNOWN_PUBLIC_SECRETS:
                raise ConfigError("RTGW_JWT_SECRET is a well-known default; generate your own")
            if len(self.jwt_secret) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"RTGW_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters"
                )
        unknown = set(self.jwt_algorithms) - {"HS256", "RS256", "ES256"}
        if unknown:
            raise ConfigError(f"RTGW_JWT_ALGORITHMS: unsupported {sorted(unknown)}")
        for name, value in (("RTGW_SLOT", self.slot), ("RTGW_PUBLICATION", self.publication)):
            if not _PG_NAME.fullmatch(value):
                raise ConfigError(
                    f"{name} must be 1-63 lower-case ASCII letters, digits and _, "
                    f"not starting with a digit: {value!r}"
                )
        if self.max_messages_per_s <= 0 or self.max_connections_per_ip < 1:
            raise ConfigError("RTGW_MAX_MESSAGES_PER_S and RTGW_MAX_CONNECTIONS_PER_IP must be > 0")
        if self.source == "supabase" and not (self.supabase_url and self.supabase_service_key):
            raise ConfigError(
                "RTGW_SOURCE=supabase needs RTGW_SUPABASE_URL and RTGW_SUPABASE_SERVICE_KEY"
            )
        if self.max_frame_bytes < 1024 or self.max_outbox_bytes < self.max_frame_bytes:
            raise ConfigError("RTGW_MAX_FRAME_BYTES must be >= 1024 and <= RTGW_MAX_OUTBOX_BYTES")
        if self.max_publish_batch < 1 or self.max_publish_batch_bytes < self.max_publish_bytes:
            raise ConfigError("RTGW_MAX_PUBLISH_BATCH must be > 0 and RTGW_MAX_PUBLISH_BATCH_BYTES "
                              ">= RTGW_MAX_PUBLISH_BYTES")
        if min(self.max_head_bytes, self.max_head_line_bytes, self.max_head_lines) < 1 or (
            self.head_timeout_s <= 0
        ):
            raise ConfigError(
                "RTGW_MAX_HEAD_BYTES, RTGW_MAX_HEAD_LINE_BYTES, RTGW_MAX_HEAD_LINES and "
                "RTGW_HEAD_TIMEOUT_S must be > 0"
            )
        try:
            ProxySet(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"RTGW_TRUSTED_PROXIES: {exc}") from None
        if self.shutdown_grace_s <= 0:
            raise ConfigError("RTGW_SHUTDOWN_GRACE_S must be > 0")
        if self.takeover_s <= 0:
            raise ConfigError("RTGW_TAKEOVER_S must be > 0")
        if self.cache == "redis" and self.source != "postgres":
            raise ConfigError("RTGW_CACHE=redis needs RTGW_SOURCE=postgres: the shared cache "
                              "orders rows by stream positions, which only a slot shares")
        if self.enrich_batch_max < 1 or self.enrich_cache_size < 0 or self.enrich_ttl_s <= 0:
            raise ConfigError("RTGW_ENRICH_BATCH_MAX and RTGW_ENRICH_TTL_S must be > 0, "
                              "RTGW_ENRICH_CACHE_SIZE >= 0")
        if self.roles_cache_size < 1:
            raise ConfigError("RTGW_ROLES_CACHE_SIZE must be >= 1 (a user is cached once read)")
        if not _QUEUE_NAME.fullmatch(self.queue_name):
            raise ConfigError("RTGW_TASK_QUEUE must be 1-100 letters, digits, '_', '.' or '-'")
        if any(delay < 0 for delay in self.webhook_retry_s) or self.webhook_timeout_s <= 0:
            raise ConfigError("RTGW_WEBHOOK_RETRY_S must be >= 0 and RTGW_WEBHOOK_TIMEOUT_S > 0")
        for name in ("history_size", "history_total", "history_age_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RTGW_{name.upper()} must be >= 0 (0 keeps no history)")
