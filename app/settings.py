"""Settings: environment variables with the prefix ``CACHEGW_`` (nested with ``__``).

Built by ``app.config.load()`` inside the application factory and the commands, never at
import: a bad value fails start-up with one line naming the variable, the value and the rule.
Every field has a description: ``docs/configuration.md`` is generated from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseModel):
    """How the slot router reaches the Redis Cluster."""

    nodes: str = Field(
        default="127.0.0.1:7000",
        description="Comma-separated host:port startup nodes; any reachable one gives the map.",
    )
    username: str | None = Field(default=None, description="ACL user (Redis 6+).")
    password: SecretStr | None = Field(
        default=None, description="Password of the ACL user (or of the default user)."
    )
    tls: bool = Field(default=False, description="Connect to every node over TLS.")
    tls_ca_file: str | None = Field(
        default=None, description="CA bundle that signs the nodes' certificates (TLS)."
    )
    tls_cert_file: str | None = Field(default=None, description="Client certificate (mutual TLS).")
    tls_key_file: str | None = Field(
        default=None, description="Private key of the client certificate (mutual TLS)."
    )
    tls_check_hostname: bool = Field(
        default=True, description="Check each node's certificate names its host."
    )
    connect_timeout_s: float = Field(
        default=0.2, gt=0, le=10, description="Longest wait to open a connection to a node."
    )
    socket_timeout_s: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="Longest wait for a node's reply on an open connection.",
    )
    max_connections_per_node: int = Field(
        default=32, ge=1, le=1024, description="Connections kept open to each node."
    )
    max_in_flight_per_node: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Commands queued or in flight to one node before requests are shed (503).",
    )
    refresh_min_interval_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="Least time between two reloads of the slot map (a MOVED reply asks for one).",
    )
    refresh_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="The slot map is reloaded this often anyway."
    )
    max_redirects: int = Field(
        default=5, ge=1, le=16, description="MOVED/ASK redirects followed for one command."
    )
    primary_timeout_ms: int = Field(
        default=60,
        ge=1,
        le=10000,
        description="The primary's share of a read's deadline; the rest is left to the tiers "
        "behind it. Also bounds the cache update after a write.",
    )
    replica_timeout_ms: int = Field(
        default=40, ge=1, le=10000, description="The replica's share of a read's deadline."
    )
    key_prefix: str = Field(
        default="cg",
        min_length=1,
        max_length=32,
        description="Prefix of every Redis key the gateway writes (<prefix>:<namespace>:<key>).",
    )
    ttl_cap_s: int = Field(
        default=3600, ge=1, description="Longest life of a cached copy in Redis."
    )
    tombstone_ttl_s: int = Field(
        default=60, ge=1, le=86400, description="How long a delete's tombstone stays in Redis."
    )

    @field_validator("nodes")
    @classmethod
    def _nodes_parse(cls, value: str) -> str:
        parse_nodes(value)
        return value

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return parse_nodes(self.nodes)


def parse_nodes(value: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("at least one host:port is needed")
    return out


class PostgresSettings(BaseModel):
    """The authoritative store."""

    dsn: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:15432/cachegw"),
        description="libpq URL of the authoritative store (its password is masked in every "
        "log and in `cachegw config show`).",
    )
    ssl_mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer",
        description="As libpq's sslmode; verify-* check the server certificate (ssl_ca_file).",
    )
    ssl_ca_file: str | None = Field(
        default=None, description="CA bundle for ssl_mode verify-ca and verify-full."
    )
    pool_min_size: int = Field(
        default=2, ge=0, le=100, description="Connections the pool keeps open when idle."
    )
    pool_max_size: int = Field(
        default=10, ge=1, le=200, description="Most connections the pool opens."
    )
    connect_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Longest wait to open a connection."
    )
    # Whether writes keep the per-row NOTIFY: copied from ``feed.mode`` by ``Settings`` (not a
    # variable of its own, so the two cannot disagree), and a ``Store`` built from ``settings.pg``
    # alone writes as the gateway does. Off unless the feed is in notify mode.
    _feed_notify: bool = PrivateAttr(default=False)

    @property
    def feed_notify(self) -> bool:
        return self._feed_notify

    def follow_feed_mode(self, mode: Literal["relay", "notify"]) -> None:
        self._feed_notify = mode == "notify"

    @model_validator(mode="after")
    def _pool_sizes(self) -> PostgresSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The same DSN in the form SQLAlchemy's asyncpg dialect takes (for alembic)."""
        dsn = self.dsn.get_secret_value()
        for prefix in ("postgresql://", "postgres://"):
            if dsn.startswith(prefix):
                return "postgresql+asyncpg://" + dsn[len(prefix) :]
        return dsn


class LimitSettings(BaseModel):
    """What a request may carry."""

    max_key_bytes: int = Field(default=512, ge=1, le=4096, description="Longest key (UTF-8 bytes).")
    max_value_bytes: int = Field(
        default=1024 * 1024, ge=1, le=64 * 1024 * 1024, description="Largest value of a PUT."
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request head (all headers together).",
    )
    max_target_bytes: int = Field(
        default=8 * 1024, ge=256, le=1024 * 1024, description="Request path and query string."
    )
    min_ttl_s: int = Field(default=1, ge=1, description="Shortest TTL a write may ask for.")
    max_ttl_s: int = Field(default=30 * 86400, ge=1, description="Longest TTL a write may ask for.")
    max_batch_ops: int = Field(default=1000, ge=1, le=100_000, description="Ops per batch.")
    max_batch_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="A batch's body."
    )

    @model_validator(mode="after")
    def _ttl_range(self) -> LimitSettings:
        if self.min_ttl_s > self.max_ttl_s:
            raise ValueError("min_ttl_s must not exceed max_ttl_s")
        return self


class OutboxSettings(BaseModel):
    """The repairer that re-applies cache updates that could not reach Redis in time."""

    interval_s: float = Field(
        default=0.5, gt=0, le=60, description="How often the repairer looks for rows to re-apply."
    )
    grace_s: float = Field(
        default=2.0, ge=0, le=600, description="Rows younger than this belong to their request."
    )
    batch_size: int = Field(default=100, ge=1, le=10000, description="Rows re-applied per round.")
    max_backoff_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest pause before a failing row is tried again.",
    )
    retain_s: float = Field(
        default=120.0,
        ge=0,
        le=86400,
        description="Applied rows are kept this long, to be replayed after a Redis failover "
        "(which can lose the last writes a primary acknowledged) and to catch up the feed.",
    )


class StalenessSettings(BaseModel):
    """How far behind the store a fallback tier's answer may be (README, "Guarantees")."""

    budget_s: float = Field(default=2.0, ge=0, le=3600, description="Default max-stale.")
    max_stale_cap_s: float = Field(
        default=60.0, ge=0, le=86400, description="Largest max-stale a caller may ask for."
    )
    stale_if_error_s: float = Field(
        default=30.0, ge=0, le=86400, description="Default stale-if-error when the store fails."
    )
    stale_if_error_cap_s: float = Field(
        default=3600.0, ge=0, le=86400, description="Largest stale-if-error a caller may ask for."
    )


class LocalSettings(BaseModel):
    """The in-process LRU."""

    max_entries: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="Entries the in-process LRU holds (0: no local tier).",
    )
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        le=16 * 1024**3,
        description="Bytes of values the in-process LRU holds.",
    )
    max_age_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Longest life of a local copy; at most feed.versions_ttl_s.",
    )


class FeedSettings(BaseModel):
    """The invalidation feed (Postgres LISTEN/NOTIFY; ``app/feed.py``, ``app/relay.py``)."""

    channel: str = Field(
        default="cachegw_invalidation",
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="The LISTEN/NOTIFY channel of the invalidation feed.",
    )
    check_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the feed's connection is checked (and a gap repaired from the "
        "outbox).",
    )
    mode: Literal["relay", "notify"] = Field(
        default="notify",
        description="notify: a NOTIFY from every write's transaction, delivered before the write "
        "is acknowledged (each such commit takes Postgres's instance-wide notify lock); relay: "
        "writes send no NOTIFY and one elected process announces committed outbox rows in "
        "batches (about 3 times the write ceiling; README); a write is answered once the relay "
        "brought it back, the relay's delay later (a PUT measured 5.9 ms at p50 against 2.7 ms).",
    )
    relay_check_s: float = Field(
        default=0.5, gt=0, le=60, description="How often a process tries to become the relay."
    )
    relay_interval_ms: int = Field(
        default=5, ge=1, le=10_000, description="The relay's pause between two outbox reads."
    )
    relay_heartbeat_ms: int = Field(
        default=200, ge=1, le=60_000, description="Longest silence of the relay with no writes."
    )
    relay_lost_after_ms: int = Field(
        default=1000,
        ge=1,
        le=600_000,
        description="Without a relay message for this long, local copies become stale-only.",
    )

    @model_validator(mode="after")
    def _relay_times(self) -> FeedSettings:
        if self.relay_lost_after_ms < 2 * max(self.relay_heartbeat_ms, self.relay_interval_ms):
            raise ValueError(
                "relay_lost_after_ms must be at least two relay heartbeats: a quiet relay would "
                "otherwise count as lost"
            )
        return self

    versions_max_keys: int = Field(
        default=200_000,
        ge=1,
        le=10_000_000,
        description="Keys whose newest seq is kept (the oldest go first).",
    )
    versions_ttl_s: float = Field(
        default=120.0, gt=0, le=86400, description="How long the newest seq of a key is kept."
    )


class TopologySettings(BaseModel):
    """The topology watcher: node roles and health, off the request path."""

    interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often node roles and health are read."
    )
    timeout_s: float = Field(
        default=0.3, gt=0, le=10, description="Longest wait for one node's CLUSTER INFO/INFO reply."
    )
    replica_max_lag_bytes: int = Field(
        default=1024 * 1024,
        ge=0,
        description="A replica further behind its primary than this is not read from.",
    )


class BreakerSettings(BaseModel):
    """Circuit breakers per route (``app/breaker.py``)."""

    window_s: int = Field(
        default=10, ge=1, le=600, description="The window over which each breaker counts calls."
    )
    min_calls: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="Calls in the window before the rates can open it.",
    )
    failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Share of failed calls that opens it."
    )
    slow_call_s: float = Field(default=0.05, gt=0, le=60, description="The latency SLO.")
    slow_call_rate: float = Field(
        default=0.8, gt=0, le=1, description="Share of calls slower than slow_call_s that opens it."
    )
    consecutive_failures: int = Field(
        default=20,
        ge=0,
        le=100_000,
        description="This many failures in a row open the breaker whatever the window holds "
        "(a node that stops answering after a busy minute); 0: the rates alone decide.",
    )
    wait_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="First wait of an open breaker before it probes the route.",
    )
    max_wait_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Longest wait (the wait doubles on each failed probe).",
    )
    probe_interval_s: float = Field(
        default=0.25, gt=0, le=60, description="Pause between two probes of a half-open route."
    )
    probe_timeout_s: float = Field(
        default=0.25, gt=0, le=60, description="Longest wait for a probe's answer."
    )

    @model_validator(mode="after")
    def _waits(self) -> BreakerSettings:
        if self.wait_s > self.max_wait_s:
            raise ValueError("wait_s must not exceed max_wait_s")
        return self


class CoalescingSettings(BaseModel):
    """Singleflight in the process, a short Redis lock across processes, early refresh."""

    max_waiters: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Requests that may wait on one key's load at once.",
    )
    cross_process: bool = Field(
        default=True, description="Coalesce loads across processes too (a short lock in Redis)."
    )
    lock_ttl_ms: int = Field(
        default=500,
        ge=10,
        le=60_000,
        description="Life of that lock (a crashed loader's is freed then).",
    )
    xfetch_beta: float = Field(default=1.0, ge=0, le=100, description="0 turns early refresh off.")
    xfetch_min_delta_s: float = Field(
        default=0.05, ge=0, le=60, description="Least recompute time assumed by early refresh."
    )


class DegradedSettings(BaseModel):
    """The slow-fallback runbook automated: slow fallbacks switch to a more defensive policy."""

    p95_threshold_s: float = Field(
        default=0.05,
        gt=0,
        le=60,
        description="Degraded mode starts when the p95 of fallback latency over the window "
        "passes this.",
    )
    window_s: float = Field(
        default=10.0, gt=0, le=3600, description="The window of fallback latencies."
    )
    min_samples: int = Field(
        default=50, ge=1, le=1_000_000, description="Fallbacks in the window before it can start."
    )
    retries: int = Field(default=2, ge=0, le=10, description="Retries of a read while degraded.")
    evaluate_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often the window is looked at."
    )


class AuthSettings(BaseModel):
    """API keys (``app/auth.py``)."""

    enabled: bool = Field(
        default=True, description="False lets anyone call (logged as a warning at start-up)."
    )
    default_namespace: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The namespace of every request when auth is disabled.",
    )
    refresh_s: float = Field(default=2.0, gt=0, le=300, description="Key table reload period.")
    rate_per_s: float = Field(
        default=0.0, ge=0, description="Default request rate per key (see rate_scope); 0: none."
    )
    burst: int = Field(
        default=1000, ge=1, description="Requests a key may send at once above its rate."
    )
    rate_scope: Literal["fleet", "process"] = Field(
        default="fleet",
        description="fleet: a key's rate holds for all processes together (a token bucket in "
        "Redis); process: for each process alone (N processes admit N times the rate).",
    )
    shared_rate_timeout_ms: int = Field(
        default=25,
        ge=1,
        le=1000,
        description="Longest wait for the fleet's bucket; past it (or while Redis cannot "
        "answer) this process's own bucket decides.",
    )
    protect_metrics: bool = Field(default=False, description="/metrics needs the admin scope.")


class ServerSettings(BaseModel):
    """How ``cachegw serve`` stops (``app/drain.py``) and keeps connections."""

    drain_pause_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="After SIGTERM, /readyz answers 503 and requests are still served this long, "
        "so load balancers take the instance out before it stops accepting (0 under Kubernetes, "
        "whose preStop hook pauses instead). SIGINT stops at once.",
    )
    graceful_timeout_s: int = Field(
        default=10,
        ge=0,
        le=300,
        description="Then the longest wait for requests in flight before they are cut.",
    )
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="An idle client connection is kept this long: more than a load balancer's "
        "idle timeout (60 s is common), so the balancer, not the gateway, closes it.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CACHEGW_",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    pg: PostgresSettings = Field(default_factory=PostgresSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    staleness: StalenessSettings = Field(default_factory=StalenessSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    feed: FeedSettings = Field(default_factory=FeedSettings)
    topology: TopologySettings = Field(default_factory=TopologySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    coalescing: CoalescingSettings = Field(default_factory=CoalescingSettings)
    degraded: DegradedSettings = Field(default_factory=DegradedSettings)
    read_deadline_ms: int = Field(
        default=250, ge=1, le=60000, description="A read's whole deadline, every tier included."
    )
    read_retries: int = Field(default=3, ge=0, le=10, description="Retries of transient errors.")
    retry_base_s: float = Field(
        default=0.004,
        gt=0,
        le=1,
        description="First pause before a retry (it doubles, with jitter).",
    )
    retry_cap_s: float = Field(
        default=0.04, gt=0, le=5, description="Longest pause between two retries."
    )
    write_deadline_ms: int = Field(
        default=2000,
        ge=1,
        le=60000,
        description="A write's whole deadline (the store's commit included).",
    )
    log_level: str = Field(
        default="INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR)$",
        description="DEBUG, INFO, WARNING or ERROR.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="json: one JSON object per line; console: lines for people to read; auto: "
        "console when the log stream is a terminal, json otherwise.",
    )
    access_log: bool = Field(
        default=False,
        description="A log line per request (uvicorn's access log). Off by default: the "
        "request metrics and traces already count every request, and the line costs CPU.",
    )
    trace_keys_plainly: bool = Field(
        default=False, description="Put keys in span attributes as they are, not as hashes."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _writes_follow_feed_mode(self) -> Settings:
        self.pg.follow_feed_mode(self.feed.mode)
        return self

    @model_validator(mode="after")
    def _local_age(self) -> Settings:
        if self.local.max_age_s > self.feed.versions_ttl_s:
            raise ValueError(
                "local.max_age_s must not exceed feed.versions_ttl_s: a local copy must not "
                "outlive the record of the announcements that would show it is too old"
            )
        return self
