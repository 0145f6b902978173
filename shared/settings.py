"""Typed configuration read once from `SWITCHBOARD_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "switchboard-dev-secret-do-not-use-in-production"

SERVICE_PORTS = {
    "ingest": 8001,
    "assigner": 8002,
    "idle_monitor": 8003,
    "stats": 8004,
    "assigner_worker": 8005,
    "delivery": 8006,
    "assigner_relay": 8007,
}


class ConfigError(RuntimeError):
    """Raised when the environment does not describe a runnable configuration."""


class Settings(BaseSettings):
    """Every knob of Switchboard; each field is `SWITCHBOARD_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/switchboard"
    auth_secret: str = Field(min_length=32, description="HS256 key for bearer tokens.")
    dev_mode: bool = Field(False, description="Allows the well-known development secret.")
    topic_prefix: str = Field("", description="Prepended to every topic name (tests isolate with it).")
    topic_partitions: int = Field(6, ge=1)
    topic_replication_factor: int = Field(
        1,
        ge=1,
        description="Replicas of each topic ensure_topics creates: 1 for the local single broker, "
        "3 on a cluster (with the brokers' min.insync.replicas=2, acks=all then "
        "survives the loss of one broker).",
    )

    idle_timeout_s: float = Field(300, gt=0)
    idle_check_interval_s: float = Field(0.2, gt=0)
    repeat_cooldown_s: float = Field(60, ge=0)
    operator_capacity: int = Field(1, ge=1)
    assigner_mode: Literal["all", "api", "worker", "relay"] = Field(
        "all",
        description="all: one assigner process does everything; api: HTTP only (operators, admins); "
        "worker: the inbound/timeouts consumer only, so its batches never hold up an operator's request; "
        "relay: the outbox relay, queue gauges and retention, so a relay round never holds up a batch.",
    )

    consumer_max_records: int = Field(500, ge=1)
    consumer_poll_timeout_ms: int = Field(
        50,
        ge=1,
        description="A poll's wait for records; FastStream then sleeps as long after an empty poll, so this "
        "bounds the delay a record arriving at an idle consumer sees.",
    )
    kafka_send_timeout_s: float = Field(5, gt=0)
    outbox_batch_size: int = Field(500, ge=1)
    outbox_poll_interval_s: float = Field(0.05, gt=0)

    gc_threshold0: int = Field(
        20000,
        ge=0,
        description="A service process's young-generation GC threshold (Python's is 700; 0 keeps Python's). "
        "Higher means fewer collections; startup objects are frozen out of them either way (shared/gc_tuning.py).",
    )

    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(20, ge=1)
    http_host: str = "127.0.0.1"
    ingest_port: int = SERVICE_PORTS["ingest"]
    assigner_port: int = SERVICE_PORTS["assigner"]
    idle_monitor_port: int = SERVICE_PORTS["idle_monitor"]
    stats_port: int = SERVICE_PORTS["stats"]
    assigner_worker_port: int = SERVICE_PORTS["assigner_worker"]
    assigner_relay_port: int = SERVICE_PORTS["assigner_relay"]
    ingest_url: str = Field("http://127.0.0.1:8001", description="Ingest as browsers reach it (console replies).")
    stats_url: str = Field("http://127.0.0.1:8004", description="Stats as browsers reach it (admin page).")
    log_level: str = "INFO"
    consumer_stall_s: float = Field(
        60,
        gt=0,
        description="A consumer group (or supervised background loop) failing for longer than this "
        "turns /readyz to 503 and switchboard_consumer_healthy to 0.",
    )

    # Bounded storage (docs/operations.md, "Data retention").
    dedup_window_s: float = Field(
        8 * 86400,
        gt=0,
        description="How long applied event ids (and ingest's acknowledged idempotency keys) are kept. Must "
        "outlive Kafka's retention (7 days by default): a record still in a topic can be redelivered.",
    )
    message_retention_days: float = Field(
        30,
        ge=0,
        description="Message texts of chats completed longer ago than this are purged (counts stay); "
        "0 keeps them forever.",
    )
    retention_interval_s: float = Field(3600, gt=0, description="How often the prune/purge loop runs.")
    retention_batch_size: int = Field(5000, ge=1, description="Rows one prune/purge statement touches at most.")
    delivery_port: int = SERVICE_PORTS["delivery"]
    delivery_retention_s: float = Field(24 * 3600, gt=0, description="How long chat stream events stay replayable.")
    delivery_heartbeat_s: float = Field(15, gt=0, description="Seconds between SSE heartbeat comments.")
    delivery_chat_token_ttl_s: int = Field(900, ge=1, le=24 * 3600, description="Lifetime of minted chat tokens.")
    delivery_webhook_timeout_s: float = Field(10, gt=0, description="Per webhook request (connect to last byte).")
    delivery_webhook_backoff_base_s: float = Field(5, gt=0, description="First retry delay; doubles per attempt.")
    delivery_webhook_backoff_max_s: float = Field(3600, gt=0, description="Longest delay between two attempts.")
    delivery_webhook_disable_after_s: float = Field(
        24 * 3600, gt=0, description="An endpoint failing this long is disabled."
    )
    delivery_webhook_poll_interval_s: float = Field(0.5, gt=0, description="Sender's pause when nothing is due.")
    delivery_webhook_concurrency: int = Field(20, ge=1, description="Deliveries one instance sends at once.")
    delivery_url: str = Field("http://127.0.0.1:8006", description="Delivery as browsers reach it (console stream).")

    @model_validator(mode="after")
    def _refuse_dev_secret(self) -> Settings:
        if self.auth_secret == DEV_SECRET and not self.dev_mode:
            raise ValueError(
                "SWITCHBOARD_AUTH_SECRET is the development secret; set a real secret or SWITCHBOARD_DEV_MODE=1"
            )
        return self

    def topic(self, name: str) -> str:
        """The real topic name of a logical topic such as `chat.inbound`."""
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        """The real consumer group id of a logical group (prefixed like topics, so tests never share one)."""
        return f"{self.topic_prefix}{name}"

    def port_of(self, service: str) -> int:
        """The HTTP port configured for a service."""
        return getattr(self, f"{service}_port")

    # Identity providers (docs/operations.md, "Running with a JWKS provider").
    auth_jwks_url: str | None = Field(
        None,
        description="An identity provider's JWKS URL: RS256/ES256 tokens are verified against it "
        "(HS256 tokens signed with SWITCHBOARD_AUTH_SECRET are still accepted).",
    )
    auth_issuer: str | None = Field(None, description="The `iss` a JWKS-verified token must carry.")
    auth_audience: str | None = Field(None, description="The `aud` a JWKS-verified token must carry.")
    auth_role_claim: str = Field(
        "role", min_length=1, description="Claim (dotted path) holding the role: a string or a list."
    )
    auth_jwks_cache_s: float = Field(300, gt=0, description="How long a fetched key set is used.")
    auth_jwks_min_refresh_s: float = Field(30, ge=0, description="Least time between refetches for unknown kids.")

    @model_validator(mode="after")
    def _jwks_needs_issuer_and_audience(self) -> Settings:
        if self.auth_jwks_url and not (self.auth_issuer and self.auth_audience):
            raise ValueError("SWITCHBOARD_AUTH_JWKS_URL needs SWITCHBOARD_AUTH_ISSUER and SWITCHBOARD_AUTH_AUDIENCE")
        return self


def load_settings(**overrides) -> Settings:
    """Read settings from the environment, turning validation errors into named config errors."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = "_".join(str(p) for p in err["loc"]).upper()
            name = f"SWITCHBOARD_{loc}" if loc else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
