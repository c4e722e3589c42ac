"""Configuration: ``STUDYCAST_*`` environment variables or a ``.env`` file, with safe defaults."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from attendance.errors import InvalidInput

SECRET_FILE = "secret_key"  # noqa: S105 (a file name, not a secret)


class Settings(BaseSettings):
    """Everything an operator may set. Unknown ``STUDYCAST_*`` variables are ignored."""

    model_config = SettingsConfigDict(
        env_prefix="STUDYCAST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    host: str = Field("127.0.0.1", description="address the HTTP server listens on")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    data_dir: Path = Field(Path("data"), description="where the SQLite store, key and files live")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file studycast.db under data_dir"
    )
    secret_key: str | None = Field(
        None, description="signs tokens and cookies; default: generated once under data_dir"
    )
    public_base_url: str | None = Field(
        None, description="URL people open (behind a proxy); default http://HOST:PORT"
    )
    ice_addresses: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="IP addresses the relay offers to peers (comma-separated); "
        "default: every non-loopback interface",
    )
    max_viewers: int = Field(
        500, ge=1, le=100_000, description="viewers per node, over all sessions"
    )
    behind_kb: int = Field(
        256,
        ge=0,
        le=1_000_000,
        description="a session whose source has more than this many KB (or a quarter of its "
        "socket buffer) queued unread on a node, or a datagram waiting over 0.25 s for 1.5 s, is "
        "behind live there: the node refuses new viewers (503), and after 2 s closes its newest "
        "ones; 0: never",
    )
    login_ttl_hours: float = Field(12.0, gt=0, le=24 * 30)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body accepted")
    evidence_interval_s: float = Field(
        15.0, ge=0.2, le=300, description="how often media delivered to viewers is recorded"
    )
    retention_recordings_days: int | None = Field(
        None, ge=1, le=36500, description="days recordings are kept (unset: for ever)"
    )
    retention_raw_events_days: int | None = Field(
        None,
        ge=1,
        le=36500,
        description="days raw heartbeats and media evidence are kept (unset: for ever)",
    )
    tick_interval_s: float = Field(
        1.0, ge=0.05, le=60, description="how often due presence checks and quiz timers are run"
    )
    origin_url: str | None = Field(
        None,
        description="run as an edge of this origin (its base URL): media is pulled from it "
        "over WHEP, once per live session; the record store must be the origin's PostgreSQL",
    )
    node_token: str | None = Field(
        None, description="the token this edge pulls media with (`studycast node token NAME`)"
    )
    node_name: str | None = Field(
        None,
        description="this node's name in /api/nodes and metrics; default: 'origin', or the "
        "node token's name on an edge",
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )

    @field_validator("public_base_url", "origin_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("ice_addresses", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return parts or None
        return value

    @field_validator("ice_addresses")
    @classmethod
    def _check_addresses(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return [str(ipaddress.ip_address(v)) for v in value]
        except ValueError as exc:
            raise ValueError(f"must be IP addresses: {exc}") from None

    @field_validator("secret_key")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _check_edge(self) -> Settings:
        if self.origin_url and not self.node_token:
            raise ValueError("an edge (origin_url set) needs node_token to pull media with")
        if self.node_token and not self.origin_url:
            raise ValueError("node_token is only used by an edge: set origin_url too")
        return self

    @property
    def is_edge(self) -> bool:
        return self.origin_url is not None

    def resolved_node_name(self) -> str:
        """This node's name: as configured, else the edge token's subject, else 'origin'."""
        if self.node_name:
            return self.node_name
        if self.node_token:
            import jwt

            try:
                subject = str(
                    jwt.decode(self.node_token, options={"verify_signature": False})["sub"]
                )
            except (jwt.PyJWTError, KeyError):
                subject = ""
            kind, _, name = subject.partition(":")
            if kind == "node" and name:
                return name
            return "edge"
        return "origin"

    def sqlite_path(self) -> Path:
        """The embedded store's file, used when no database URL is configured."""
        return self.data_dir / "studycast.db"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path().resolve()}"

    def base_url(self, port: int | None = None) -> str:
        if self.public_base_url:
            return self.public_base_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{port if port is not None else self.port}"

    def ensure_data_dir(self) -> Path:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"data dir {self.data_dir} cannot be created: {exc}") from exc
        return self.data_dir

    def resolved_secret_key(self) -> str:
        """The configured key, else the one stored under the data dir (made on first run)."""
        if self.secret_key:
            return self.secret_key
        path = self.ensure_data_dir() / SECRET_FILE
        try:
            key = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            key = ""
        if len(key) >= 32:
            return key
        key = secrets.token_urlsafe(48)
        # Written to a private temporary file, then moved into place: the key is never readable
        # by others, and a reader never sees half a key.
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if not path.exists():
            try:
                # link() fails if another process created the key meanwhile: then use theirs.
                os.link(tmp, path)
            except FileExistsError:
                tmp.unlink()
                return self.resolved_secret_key()
            tmp.unlink()
            return key
        os.replace(tmp, path)
        return key
