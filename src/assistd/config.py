"""Settings, read once from the environment (every one is listed in docs/settings.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

OPENAI_BASE_URL = "https://api.openai.com/v1"
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # OpenAI's own limit per file
# A JSON body: room for a thread made with many messages of 256,000 characters each.
MAX_BODY_BYTES = 32 * 1024 * 1024


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


class SettingError(ValueError):
    """A setting has a value assistd can't use: the message names the variable and what is allowed."""


def _float(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingError(f"{name} must be a number, got {raw!r}") from exc
    if not value >= minimum or value == float("inf"):
        raise SettingError(f"{name} must be a number of at least {minimum:g}, got {raw!r}")
    return value


def _int(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise SettingError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _switch(env: dict[str, str], name: str) -> bool:
    """`auto` (the default) or `on` is True; `off` is False."""
    return _choice(env, name, "auto", ("auto", "on", "off", "true", "false", "1", "0")) not in ("off", "false", "0")


def _url(env: dict[str, str], name: str, default: str, prefixes: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip()
    if value and not value.startswith(prefixes):
        # Only the scheme is repeated: the rest of a URL may hold a password.
        shown = value.split("://")[0] + "://…" if "://" in value else "a value without a scheme"
        raise SettingError(f"{name} must be a URL starting with {' or '.join(prefixes)}; got {shown}")
    return value


@dataclass(frozen=True)
class Settings:
    upstream_base_url: str = OPENAI_BASE_URL
    upstream_api_key: str = ""
    upstream_timeout: float = 600.0
    upstream_connect_timeout: float = 10.0
    upstream_max_tokens_param: str = "max_completion_tokens"
    data_dir: Path = field(default_factory=lambda: Path("./data"))
    database_url: str = ""
    api_keys: tuple[str, ...] = ()
    run_expires_seconds: float = 600.0
    worker_concurrency: int = 1000
    heartbeat_seconds: float = 2.0
    lease_seconds: float = 20.0
    shutdown_grace_seconds: float = 10.0
    redis_url: str = ""
    database_pool_size: int = 20
    events_ttl_seconds: float = 3600.0
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    embeddings_model: str = ""
    embeddings_batch_size: int = 64
    retrieval: str = "lexical"
    pgvector: bool = True
    code_interpreter: bool = True
    code_max_sessions: int = 8
    code_idle_seconds: float = 3600.0
    code_call_seconds: float = 120.0
    code_memory_mb: int = 1024
    code_cpu_seconds: int = 600
    code_processes: int = 64
    code_disk_mb: int = 256
    code_output_chars: int = 20_000
    code_dir: Path = field(default_factory=lambda: Path("/tmp/assistd-code"))
    code_files_out_mb: int | None = None  # None: code_disk_mb
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_max_connections: int = 1000
    max_body_bytes: int = MAX_BODY_BYTES
    ingest_memory_mb: int = 1024
    ingest_seconds: float = 300.0
    disk_reserve_mb: int = 64
    upstream_max_retries: int = 2
    sse_keepalive_seconds: float = 15.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    host: str = "127.0.0.1"
    port: int = 8000

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'assistd.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        """Where uploaded files' bytes live (one file per id; names never come from clients)."""
        return self.data_dir / "files"

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith(("postgresql://", "postgres://"))


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build Settings from ASSISTD_* variables (and OPENAI_API_KEY as the upstream key fallback)."""
    env = dict(os.environ if env is None else env)
    return Settings(
        upstream_base_url=_url(env, "ASSISTD_UPSTREAM_BASE_URL", OPENAI_BASE_URL, ("http://", "https://")),
        upstream_api_key=env.get("ASSISTD_UPSTREAM_API_KEY") or env.get("OPENAI_API_KEY", ""),
        upstream_timeout=_float(env, "ASSISTD_UPSTREAM_TIMEOUT", 600.0, minimum=0.001),
        upstream_connect_timeout=_float(env, "ASSISTD_UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.001),
        upstream_max_tokens_param=_choice(env, "ASSISTD_UPSTREAM_MAX_TOKENS_PARAM", "max_completion_tokens",
                                          ("max_completion_tokens", "max_tokens")),
        data_dir=Path(env.get("ASSISTD_DATA_DIR") or "./data"),
        database_url=_url(env, "ASSISTD_DATABASE_URL", "", ("sqlite:///", "postgresql://", "postgres://")),
        api_keys=_csv(env.get("ASSISTD_API_KEYS")),
        run_expires_seconds=_float(env, "ASSISTD_RUN_EXPIRES_SECONDS", 600.0, minimum=1),
        worker_concurrency=_int(env, "ASSISTD_WORKER_CONCURRENCY", 1000),
        heartbeat_seconds=_float(env, "ASSISTD_HEARTBEAT_SECONDS", 2.0, minimum=0.01),
        lease_seconds=_float(env, "ASSISTD_LEASE_SECONDS", 20.0, minimum=0.1),
        shutdown_grace_seconds=_float(env, "ASSISTD_SHUTDOWN_GRACE_SECONDS", 10.0),
        redis_url=_url(env, "ASSISTD_REDIS_URL", "", ("redis://", "rediss://", "unix://")),
        database_pool_size=_int(env, "ASSISTD_DATABASE_POOL_SIZE", 20, minimum=2),
        events_ttl_seconds=_float(env, "ASSISTD_EVENTS_TTL_SECONDS", 3600.0, minimum=1),
        max_upload_bytes=_int(env, "ASSISTD_MAX_UPLOAD_BYTES", MAX_UPLOAD_BYTES),
        embeddings_model=(env.get("ASSISTD_EMBEDDINGS_MODEL") or "").strip(),
        embeddings_batch_size=_int(env, "ASSISTD_EMBEDDINGS_BATCH_SIZE", 64),
        retrieval=_retrieval(env),
        pgvector=_switch(env, "ASSISTD_PGVECTOR"),
        code_interpreter=_switch(env, "ASSISTD_CODE_INTERPRETER"),
        code_max_sessions=_int(env, "ASSISTD_CODE_MAX_SESSIONS", 8),
        code_idle_seconds=_float(env, "ASSISTD_CODE_IDLE_SECONDS", 3600.0, minimum=1),
        code_call_seconds=_float(env, "ASSISTD_CODE_CALL_SECONDS", 120.0, minimum=0.1),
        code_memory_mb=_int(env, "ASSISTD_CODE_MEMORY_MB", 1024, minimum=64),
        code_cpu_seconds=_int(env, "ASSISTD_CODE_CPU_SECONDS", 600),
        code_processes=_int(env, "ASSISTD_CODE_PROCESSES", 64, minimum=16),
        code_disk_mb=_int(env, "ASSISTD_CODE_DISK_MB", 256),
        code_output_chars=_int(env, "ASSISTD_CODE_OUTPUT_CHARS", 20_000, minimum=100),
        code_dir=Path(env.get("ASSISTD_CODE_DIR") or "/tmp/assistd-code"),
        code_files_out_mb=_files_out_mb(env),
        http_header_timeout=_float(env, "ASSISTD_HTTP_HEADER_TIMEOUT", 10.0, minimum=0.1),
        http_body_timeout=_float(env, "ASSISTD_HTTP_BODY_TIMEOUT", 30.0, minimum=0.1),
        http_max_connections=_int(env, "ASSISTD_HTTP_MAX_CONNECTIONS", 1000, minimum=16),
        max_body_bytes=_int(env, "ASSISTD_MAX_BODY_BYTES", MAX_BODY_BYTES, minimum=1024),
        ingest_memory_mb=_int(env, "ASSISTD_INGEST_MEMORY_MB", 1024, minimum=64),
        ingest_seconds=_float(env, "ASSISTD_INGEST_SECONDS", 300.0, minimum=1),
        disk_reserve_mb=_int(env, "ASSISTD_DISK_RESERVE_MB", 64, minimum=0),
        upstream_max_retries=_int(env, "ASSISTD_UPSTREAM_MAX_RETRIES", 2, minimum=0),
        sse_keepalive_seconds=_float(env, "ASSISTD_SSE_KEEPALIVE_SECONDS", 15.0, minimum=0.1),
        log_level=_choice(env, "ASSISTD_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
        log_format=_choice(env, "ASSISTD_LOG_FORMAT", "text", ("text", "json")),
        metrics_host=(env.get("ASSISTD_METRICS_HOST") or "127.0.0.1").strip(),
        metrics_port=_int(env, "ASSISTD_METRICS_PORT", 0, minimum=0),
        host=(env.get("ASSISTD_HOST") or "127.0.0.1").strip(),
        port=_int(env, "ASSISTD_PORT", 8000, minimum=0),
    )


def _files_out_mb(env: dict[str, str]) -> int | None:
    """MB of files one code_interpreter call hands out; unset, the session's disk size."""
    if not (env.get("ASSISTD_CODE_FILES_OUT_MB") or "").strip():
        return None
    return _int(env, "ASSISTD_CODE_FILES_OUT_MB", 0, minimum=0)


def _retrieval(env: dict[str, str]) -> str:
    """`hybrid` when an embeddings model is set, else `lexical`; `dense`/`hybrid` need a model."""
    has_model = bool((env.get("ASSISTD_EMBEDDINGS_MODEL") or "").strip())
    mode = (env.get("ASSISTD_RETRIEVAL") or ("hybrid" if has_model else "lexical")).strip().lower()
    if mode not in ("hybrid", "lexical", "dense"):
        raise SettingError(f"ASSISTD_RETRIEVAL must be hybrid, lexical or dense, got {mode!r}")
    if mode != "lexical" and not has_model:
        raise SettingError(f"ASSISTD_RETRIEVAL={mode} needs ASSISTD_EMBEDDINGS_MODEL")
    return mode
