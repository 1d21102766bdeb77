"""Every refusal the gateway makes: a stable code, a human message, and how it is delivered.

An error is either *recoverable* (an ``error`` frame; the connection stays usable) or *fatal*
(an ``error`` frame followed by a WebSocket close with ``close_code``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, get_args


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses. 4xxx are rtgw's own."""

    INVALID_DATA = 1007  # a text frame that is not UTF-8
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012  # server shutting down: reconnect (elsewhere) and resume
    AUTH_FAILED = 4001  # token invalid: do not retry with the same token
    AUTH_TIMEOUT = 4002  # no valid ``auth`` frame in time
    TOKEN_EXPIRED = 4003  # token expired and no ``refresh`` arrived: get a new token
    IDLE_TIMEOUT = 4004  # Phoenix: nothing (not even a heartbeat) arrived in time
    SLOW_CONSUMER = 4008  # outbox overflowed: reconnect and resume with ``since``


ErrorCode = Literal[
    "bad_frame",
    "frame_too_large",
    "auth_required",
    "auth_timeout",
    "already_authenticated",
    "token_malformed",
    "token_expired",
    "token_signature",
    "token_algorithm",
    "token_audience",
    "token_claims",
    "token_key_unknown",
    "auth_unavailable",
    "forbidden",
    "unknown_channel",
    "bad_filter",
    "partition_claim_missing",
    "already_subscribed",
    "not_subscribed",
    "too_many_subscriptions",
    "rate_limited",
    "too_many_connections",
    "slow_consumer",
    "origin_forbidden",
    "shutting_down",
    "bus_unavailable",
    "payload_too_large",
    "batch_too_large",
    "config_invalid",
    "not_ready",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "invalid_request",
    "internal_error",
    "api_key_invalid",
    "vsn_unsupported",
    "idle_timeout",
    "bad_binding",
    "unknown_table",
    "request_head_too_large",
    "request_head_timeout",
]


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: ErrorCode
    http_status: int
    close_code: CloseCode | None  # None: recoverable, the connection stays open
    summary: str


_SPECS = (
    ErrorSpec("bad_frame", 400, None, "The frame is not valid JSON or not a known frame."),
    ErrorSpec("frame_too_large", 413, CloseCode.TOO_BIG, "A frame exceeded the size limit."),
    ErrorSpec("auth_required", 401, None, "Send an `auth` frame before this frame."),
    ErrorSpec("auth_timeout", 401, CloseCode.AUTH_TIMEOUT, "No `auth` frame arrived in time."),
    ErrorSpec("already_authenticated", 400, None, "Use `refresh` to change the token."),
    ErrorSpec("token_malformed", 401, CloseCode.AUTH_FAILED, "The token is not a valid JWT."),
    ErrorSpec("token_expired", 401, CloseCode.TOKEN_EXPIRED, "The token has expired."),
    ErrorSpec("token_signature", 401, CloseCode.AUTH_FAILED, "The token signature is wrong."),
    ErrorSpec("token_algorithm", 401, CloseCode.AUTH_FAILED, "The token's alg is not allowed."),
    ErrorSpec("token_audience", 401, CloseCode.AUTH_FAILED, "The token's aud is not accepted."),
    ErrorSpec("token_claims", 401, CloseCode.AUTH_FAILED, "A required claim is missing or bad."),
    ErrorSpec("token_key_unknown", 401, CloseCode.AUTH_FAILED, "No key matches the token's kid."),
    ErrorSpec("auth_unavailable", 503, CloseCode.INTERNAL, "Keys or roles could not be fetched."),
    ErrorSpec("forbidden", 403, None, "The token (or a role) lacks a scope the channel needs."),
    ErrorSpec("unknown_channel", 404, None, "No channel has that name."),
    ErrorSpec("bad_filter", 400, None, "The filter is malformed or names a column not allowed."),
    ErrorSpec("partition_claim_missing", 403, None, "The token lacks the partition's claim."),
    ErrorSpec("already_subscribed", 409, None, "That topic is already subscribed."),
    ErrorSpec("not_subscribed", 404, None, "That topic is not subscribed."),
    ErrorSpec("too_many_subscriptions", 429, None, "The per-connection limit was reached."),
    ErrorSpec("rate_limited", 429, None, "Too many frames per second; the frame was dropped."),
    ErrorSpec("too_many_connections", 429, CloseCode.POLICY, "Too many connections from here."),
    ErrorSpec("slow_consumer", 503, CloseCode.SLOW_CONSUMER, "The client fell too far behind."),
    ErrorSpec("origin_forbidden", 403, CloseCode.POLICY, "The Origin is not allowed."),
    ErrorSpec("shutting_down", 503, CloseCode.RESTART, "The gateway is restarting."),
    ErrorSpec("bus_unavailable", 503, CloseCode.RESTART,
              "The gateway lost its bus (Redis): reconnect, to another gateway if need be."),
    ErrorSpec("payload_too_large", 413, None, "The HTTP request body exceeds the size limit."),
    ErrorSpec("batch_too_large", 413, None, "Too many events in one publish request."),
    ErrorSpec("config_invalid", 500, None, "The configuration is invalid."),
    ErrorSpec("not_ready", 503, None, "The source is not streaming yet."),
    ErrorSpec("bad_request", 400, None, "The HTTP request is malformed or its body is wrong."),
    ErrorSpec("not_found", 404, None, "No HTTP endpoint has that path."),
    ErrorSpec("method_not_allowed", 405, None, "The endpoint does not accept that method."),
    ErrorSpec("invalid_request", 422, None, "The request's parameters or body are invalid."),
    ErrorSpec("internal_error", 500, None, "An unexpected error; it was logged."),
    ErrorSpec("api_key_invalid", 401, None, "The `apikey` is missing or wrong (at the upgrade)."),
    ErrorSpec("vsn_unsupported", 400, None, "The Phoenix `vsn` is not 1.0.0 or 2.0.0."),
    ErrorSpec("idle_timeout", 408, CloseCode.IDLE_TIMEOUT, "No frame arrived in time."),
    ErrorSpec("bad_binding", 400, None, "A postgres_changes binding is malformed."),
    ErrorSpec("unknown_table", 404, None, "No channel definition covers that table."),
    ErrorSpec("request_head_too_large", 431, None,
              "The request line or headers exceed the size or line limits."),
    ErrorSpec("request_head_timeout", 408, None, "The request's head did not arrive in time."),
)

SPECS: dict[str, ErrorSpec] = {spec.code: spec for spec in _SPECS}
assert set(SPECS) == set(get_args(ErrorCode)), "every code has exactly one spec"


class RtgwError(Exception):
    """The root of every exception rtgw raises on purpose."""


class GatewayError(RtgwError):
    """A refusal. ``code`` is one of ``SPECS`` (mypy checks it); ``message`` is for humans."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code: ErrorCode = code
        self.message = message or SPECS[code].summary
        super().__init__(f"{code}: {self.message}")

    @property
    def spec(self) -> ErrorSpec:
        return SPECS[self.code]

    @property
    def close_code(self) -> CloseCode | None:
        return self.spec.close_code


class ConfigError(RtgwError):
    """Bad configuration, found at start. The message names the file, channel and key."""
