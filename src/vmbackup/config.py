"""Settings: one validated object built from ``VMBACKUP_*`` environment variables.

Built by a factory (`load_settings`) and passed down (`create_app(settings)`), never read at import time, so each
test can give every case its own database and data directory.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "VMBACKUP_"
# Variables with our prefix that are read by other entry points, not by the service settings.
_OTHER_KNOWN = {"VMBACKUP_STORE_DIR"}


class SettingsError(Exception):
    """Start-up refused: the configuration is invalid (one-line reason in the message)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="forbid", frozen=True)

    data_dir: Path = Path("./data")
    database_url: str = ""  # empty: a SQLite file inside data_dir
    listen: str = "127.0.0.1:8080"
    admin_login: str = "admin"
    admin_password: str | None = None
    admin_email: str = "admin@localhost"
    # "inprocess": the service runs transactions itself (embedded default); "external": separate
    # `vmbackup worker` processes take them (through procrastinate on PostgreSQL).
    worker: Literal["inprocess", "external"] = "inprocess"
    worker_concurrency: int = Field(default=2, ge=1, le=64)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Threads that run request handlers at once; few, because handlers are mostly Python holding the GIL (the
    # measurements are in BENCHMARKS.md, "Handler threads"); raise it when requests mostly wait on the database.
    api_threads: int = Field(default=4, ge=1, le=1024)
    # API processes `vmbackup serve` forks, sharing the port (each with its own handler threads and caches). One by
    # default: measured in BENCHMARKS.md "Fleet polling (issue 11)". Only the first runs the in-process worker and
    # the SQLite scheduler; requests to the others queue transactions the first one's worker polls for.
    api_processes: int = Field(default=1, ge=1, le=64)
    # How long a verified Basic credential is trusted without re-running the password hash.
    auth_cache_seconds: int = Field(default=300, ge=0, le=86400)
    # Rendered backup listings kept in memory (api/listing_cache.py): how long at most (never longer than the
    # credential cache above; 0 turns it off), and how much memory they may use. As long as the credential cache:
    # the change clock, not the lifetime, keeps them true, and every entry's refill costs an uncached request
    # (at 60 s, a fleet's 1,250 entries filled together came due in a wave: BENCHMARKS.md "Fleet polling").
    listing_cache_seconds: int = Field(default=300, ge=0, le=86400)
    listing_cache_mib: int = Field(default=64, ge=1, le=16384)
    # Failed logins allowed per minute, per login and per client address, before 429 (0: no limit).
    login_failures_per_minute: int = Field(default=10, ge=0, le=100_000)
    # Slow and idle clients (api/serving.py): a request's line and headers must arrive within header_timeout of the
    # connection opening (of its first byte on a kept-alive connection) and its body within body_timeout of the
    # headers, else the connection is closed; an idle kept-alive connection is closed after keep_alive_seconds.
    # With max_connections open, a new connection closes the oldest one still waiting for its request headers,
    # or is answered 503 when every open connection is busy with a request.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    keep_alive_seconds: int = Field(default=5, ge=1, le=3600)
    max_connections: int = Field(default=500, ge=1, le=1_000_000)
    # Peers (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed: the reverse proxies in
    # front of the service. Empty: no forwarded header is believed, the client address is the connection's peer.
    trusted_proxies: tuple[str, ...] = ()
    # Directories (or single device nodes) disk images may live in, compared after resolving symlinks; given as
    # one string separated by "," or os.pathsep. Empty: no restriction (as before this setting existed).
    image_roots: tuple[Path, ...] = ()
    # argon2 cost; lowered only by the test suite, never below OWASP's minimum for argon2id (19 MiB, t=2).
    password_memory_kib: int = Field(default=65536, ge=19456)
    password_time_cost: int = Field(default=3, ge=2)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How often the scheduler looks for due auto-backups.
    scheduler_seconds: float = Field(default=15.0, ge=0.1, le=3600)
    # Allow schedules with period "minutes": for trials and tests, not for production use.
    schedule_minutes: bool = False
    # Periodic integrity check: re-verify each built backup this often, reading at most this fast.
    verify_interval_hours: float = Field(default=168.0, ge=0.0)
    verify_max_mib_per_second: float = Field(default=50.0, gt=0)
    # Transactions of one user's objects that may be pending or running at once before that user's requests to
    # queue more (take, restore, convert, delete) are refused with a 422; 0: no limit. Admins' requests and the
    # scheduler's runs are never refused (services/quotas.py).
    max_queued_per_user: int = Field(default=20, ge=0, le=100_000)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the values `load_settings` passes in. pydantic-settings' own environment source also read
        # os.environ, JSON-decoding tuple fields before our validators saw them: VMBACKUP_IMAGE_ROOTS=/a,/b in the
        # real environment stopped start-up, and the caller's environment leaked into settings built from a mapping.
        return (init_settings,)

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"must be HOST:PORT, got {v!r}")
        return v

    @field_validator("image_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.replace(os.pathsep, ",").split(",") if p.strip())
        return v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for proxy in v:
            try:
                net = ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"each proxy must be an IP address or network, got {proxy!r}") from None
            # uvicorn compares single addresses by value and treats anything with a "/" as a network.
            out.append(str(net.network_address) if net.num_addresses == 1 else str(net))
        return tuple(out)

    @field_validator("image_roots")
    @classmethod
    def _absolute_roots(cls, v: tuple[Path, ...]) -> tuple[Path, ...]:
        for root in v:
            if not root.is_absolute() or ".." in root.parts:
                raise ValueError(f"each root must be an absolute path without '..', got {str(root)!r}")
        return v

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, v: str) -> str:
        if v and not v.startswith(("sqlite://", "postgresql+psycopg://", "postgresql://")):
            raise ValueError("must start with sqlite:// or postgresql+psycopg://")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        return v

    @field_validator("admin_password")
    @classmethod
    def _no_placeholder_password(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 8 or v.lower() in {"changeme", "password", "changethis", "admin123"}):
            raise ValueError("must be at least 8 characters and not a placeholder")
        return v

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir.resolve() / 'vmbackup.db'}")
        return self

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def storage_dir(self) -> Path:
        """Default backup server directory, used for the backup server created on first start."""
        return self.data_dir.resolve() / "storage"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment; raise SettingsError with a one-line reason."""
    env = os.environ if environ is None else environ
    known = {PREFIX + name.upper() for name in Settings.model_fields} | _OTHER_KNOWN
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (known: {', '.join(sorted(known))})")
    values: dict[str, object] = {
        name: env[PREFIX + name.upper()] for name in Settings.model_fields if PREFIX + name.upper() in env
    }
    values.update(overrides)
    try:
        # The mapping given here is the only source (see Settings.settings_customise_sources), which keeps tests
        # independent of the caller's environment.
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = PREFIX + str(err["loc"][0]).upper() if err["loc"] else "settings"
        raise SettingsError(f"invalid {name}: {err['msg']}") from None
