"""Typed configuration read once from `SWITCHBOARD_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "switchboard-dev-secret-do-not-use-in-production"

SERVICE_PORTS = {"ingest": 8001, "assigner": 8002, "idle_monitor": 8003, "stats": 8004, "assigner_worker": 8005,
                 "delivery": 8006}


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

    idle_timeout_s: float = Field(300, gt=0)
    idle_check_interval_s: float = Field(0.2, gt=0)
    repeat_cooldown_s: float = Field(60, ge=0)
    operator_capacity: int = Field(1, ge=1)
    assigner_mode: Literal["all", "api", "worker"] = Field(
        "all", description="all: one assigner process does everything; api: HTTP only (operators, admins); "
                           "worker: the inbound/timeouts consumer, outbox relay and queue gauges only, "
                           "so its batches never hold up an operator's request.")

    consumer_max_records: int = Field(500, ge=1)
    consumer_poll_timeout_ms: int = Field(200, ge=1)
    kafka_send_timeout_s: float = Field(5, gt=0)
    outbox_batch_size: int = Field(500, ge=1)
    outbox_poll_interval_s: float = Field(0.05, gt=0)

    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(20, ge=1)
    http_host: str = "127.0.0.1"
    ingest_port: int = SERVICE_PORTS["ingest"]
    assigner_port: int = SERVICE_PORTS["assigner"]
    idle_monitor_port: int = SERVICE_PORTS["idle_monitor"]
    stats_port: int = SERVICE_PORTS["stats"]
    assigner_worker_port: int = SERVICE_PORTS["assigner_worker"]
    ingest_url: str = Field("http://127.0.0.1:8001", description="Ingest as browsers reach it (console replies).")
    stats_url: str = Field("http://127.0.0.1:8004", description="Stats as browsers reach it (admin page).")
    log_level: str = "INFO"
    delivery_port: int = SERVICE_PORTS["delivery"]
    delivery_retention_s: float = Field(24 * 3600, gt=0, description="How long chat stream events stay replayable.")
    delivery_heartbeat_s: float = Field(15, gt=0, description="Seconds between SSE heartbeat comments.")
    delivery_chat_token_ttl_s: int = Field(900, ge=1, le=24 * 3600, description="Lifetime of minted chat tokens.")
    delivery_webhook_timeout_s: float = Field(10, gt=0, description="Per webhook request (connect to last byte).")
    delivery_webhook_backoff_base_s: float = Field(5, gt=0, description="First retry delay; doubles per attempt.")
    delivery_webhook_backoff_max_s: float = Field(3600, gt=0, description="Longest delay between two attempts.")
    delivery_webhook_disable_after_s: float = Field(24 * 3600, gt=0,
                                                    description="An endpoint failing this long is disabled.")
    delivery_webhook_poll_interval_s: float = Field(0.5, gt=0, description="Sender's pause when nothing is due.")
    delivery_webhook_concurrency: int = Field(20, ge=1, description="Deliveries one instance sends at once.")
    delivery_url: str = Field("http://127.0.0.1:8006", description="Delivery as browsers reach it (console stream).")

    @model_validator(mode="after")
    def _refuse_dev_secret(self) -> "Settings":
        if self.auth_secret == DEV_SECRET and not self.dev_mode:
            raise ValueError(
                "SWITCHBOARD_AUTH_SECRET is the development secret; set a real secret "
                "or SWITCHBOARD_DEV_MODE=1"
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
