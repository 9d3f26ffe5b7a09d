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


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc


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
        upstream_base_url=env.get("ASSISTD_UPSTREAM_BASE_URL") or OPENAI_BASE_URL,
        upstream_api_key=env.get("ASSISTD_UPSTREAM_API_KEY") or env.get("OPENAI_API_KEY", ""),
        upstream_timeout=_float(env, "ASSISTD_UPSTREAM_TIMEOUT", 600.0),
        upstream_connect_timeout=_float(env, "ASSISTD_UPSTREAM_CONNECT_TIMEOUT", 10.0),
        upstream_max_tokens_param=env.get("ASSISTD_UPSTREAM_MAX_TOKENS_PARAM")
        or "max_completion_tokens",
        data_dir=Path(env.get("ASSISTD_DATA_DIR") or "./data"),
        database_url=env.get("ASSISTD_DATABASE_URL", ""),
        api_keys=_csv(env.get("ASSISTD_API_KEYS")),
        run_expires_seconds=_float(env, "ASSISTD_RUN_EXPIRES_SECONDS", 600.0),
        worker_concurrency=int(_float(env, "ASSISTD_WORKER_CONCURRENCY", 1000)),
        heartbeat_seconds=_float(env, "ASSISTD_HEARTBEAT_SECONDS", 2.0),
        lease_seconds=_float(env, "ASSISTD_LEASE_SECONDS", 20.0),
        shutdown_grace_seconds=_float(env, "ASSISTD_SHUTDOWN_GRACE_SECONDS", 10.0),
        redis_url=env.get("ASSISTD_REDIS_URL", ""),
        database_pool_size=max(2, int(_float(env, "ASSISTD_DATABASE_POOL_SIZE", 20))),
        events_ttl_seconds=_float(env, "ASSISTD_EVENTS_TTL_SECONDS", 3600.0),
        max_upload_bytes=int(_float(env, "ASSISTD_MAX_UPLOAD_BYTES", MAX_UPLOAD_BYTES)),
        embeddings_model=(env.get("ASSISTD_EMBEDDINGS_MODEL") or "").strip(),
        embeddings_batch_size=max(1, int(_float(env, "ASSISTD_EMBEDDINGS_BATCH_SIZE", 64))),
        retrieval=_retrieval(env),
        pgvector=(env.get("ASSISTD_PGVECTOR") or "auto").strip().lower() not in ("off", "0", "false"),
        code_interpreter=(env.get("ASSISTD_CODE_INTERPRETER") or "auto").strip().lower() not in ("off", "0", "false"),
        code_max_sessions=max(1, int(_float(env, "ASSISTD_CODE_MAX_SESSIONS", 8))),
        code_idle_seconds=_float(env, "ASSISTD_CODE_IDLE_SECONDS", 3600.0),
        code_call_seconds=_float(env, "ASSISTD_CODE_CALL_SECONDS", 120.0),
        code_memory_mb=max(64, int(_float(env, "ASSISTD_CODE_MEMORY_MB", 1024))),
        code_cpu_seconds=max(1, int(_float(env, "ASSISTD_CODE_CPU_SECONDS", 600))),
        code_processes=max(16, int(_float(env, "ASSISTD_CODE_PROCESSES", 64))),
        code_disk_mb=max(1, int(_float(env, "ASSISTD_CODE_DISK_MB", 256))),
        code_output_chars=max(100, int(_float(env, "ASSISTD_CODE_OUTPUT_CHARS", 20_000))),
        code_dir=Path(env.get("ASSISTD_CODE_DIR") or "/tmp/assistd-code"),
        code_files_out_mb=_files_out_mb(env),
        http_header_timeout=max(0.1, _float(env, "ASSISTD_HTTP_HEADER_TIMEOUT", 10.0)),
        http_body_timeout=max(0.1, _float(env, "ASSISTD_HTTP_BODY_TIMEOUT", 30.0)),
        http_max_connections=max(16, int(_float(env, "ASSISTD_HTTP_MAX_CONNECTIONS", 1000))),
        max_body_bytes=max(1024, int(_float(env, "ASSISTD_MAX_BODY_BYTES", MAX_BODY_BYTES))),
        ingest_memory_mb=max(64, int(_float(env, "ASSISTD_INGEST_MEMORY_MB", 1024))),
        ingest_seconds=max(1.0, _float(env, "ASSISTD_INGEST_SECONDS", 300.0)),
        disk_reserve_mb=max(0, int(_float(env, "ASSISTD_DISK_RESERVE_MB", 64))),
        upstream_max_retries=max(0, int(_float(env, "ASSISTD_UPSTREAM_MAX_RETRIES", 2))),
        sse_keepalive_seconds=max(0.1, _float(env, "ASSISTD_SSE_KEEPALIVE_SECONDS", 15.0)),
    )


def _files_out_mb(env: dict[str, str]) -> int | None:
    """MB of files one code_interpreter call hands out; unset, the session's disk size."""
    if not (env.get("ASSISTD_CODE_FILES_OUT_MB") or "").strip():
        return None
    return max(0, int(_float(env, "ASSISTD_CODE_FILES_OUT_MB", 0)))


def _retrieval(env: dict[str, str]) -> str:
    """`hybrid` when an embeddings model is set, else `lexical`; `dense`/`hybrid` need a model."""
    has_model = bool((env.get("ASSISTD_EMBEDDINGS_MODEL") or "").strip())
    mode = (env.get("ASSISTD_RETRIEVAL") or ("hybrid" if has_model else "lexical")).strip().lower()
    if mode not in ("hybrid", "lexical", "dense"):
        raise SystemExit(f"ASSISTD_RETRIEVAL must be hybrid, lexical or dense, got {mode!r}")
    if mode != "lexical" and not has_model:
        raise SystemExit(f"ASSISTD_RETRIEVAL={mode} needs ASSISTD_EMBEDDINGS_MODEL")
    return mode
