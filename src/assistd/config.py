"""Settings, each defined once: a field of `Settings` carries its ASSISTD_ variable (the field's
name, upper-cased, after the prefix), its default, its bounds and its parsing. docs/settings.md
explains them; a test keeps it to these fields."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any

import annotated_types
from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

OPENAI_BASE_URL = "https://api.openai.com/v1"
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # OpenAI's own limit per file
# A JSON body: room for a thread made with many messages of 256,000 characters each.
MAX_BODY_BYTES = 32 * 1024 * 1024
ENV_PREFIX = "ASSISTD_"


class SettingError(ValueError):
    """A setting has a value assistd can't use: the message names the variable and what is allowed."""


def _problem(message: str, **context: str) -> PydanticCustomError:
    """A value a setting refuses; the message follows the variable's name (see _setting_error)."""
    return PydanticCustomError("setting", message, context)


# ---------------------------------------------------------------- how a variable's text is read


def _whole(value: object) -> object:
    """Text read as Python's int() reads it, so `1.5` is refused rather than rounded."""
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        raise _problem("must be a whole number, got {raw}", raw=repr(value)) from None


def _whole_or_unset(value: object) -> object:
    """Blank is unset (None), as an empty variable is."""
    return None if isinstance(value, str) and not value.strip() else _whole(value)


def _number(value: object) -> object:
    """Text read as Python's float() reads it; infinity and NaN pass here and fail allow_inf_nan."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise _problem("must be a number, got {raw}", raw=repr(value)) from None


def _stripped(value: object) -> str:
    return str(value).strip()


def _choose(value: object, allowed: tuple[str, ...]) -> str:
    """A choice, without case or surrounding spaces: ` Info` is `info`."""
    chosen = str(value).strip().lower()
    if chosen not in allowed:
        raise _problem("must be one of {allowed}; got {chosen}", allowed=", ".join(allowed), chosen=repr(chosen))
    return chosen


def _one_of(*allowed: str) -> BeforeValidator:
    return BeforeValidator(lambda value: _choose(value, allowed))


SWITCH = ("auto", "on", "off", "true", "false", "1", "0")


def _switch(value: object) -> object:
    """`auto` (the default) and `on` are True; `off` is False (true/false/1/0 as well)."""
    return value if isinstance(value, bool) else _choose(value, SWITCH) not in ("off", "false", "0")


def _url(*schemes: str) -> BeforeValidator:
    """A URL with one of `schemes`, or blank; a refused one is shown by its scheme alone, since
    the rest of a URL may hold a password."""
    def checked(value: object) -> str:
        url = str(value).strip()
        if url and not url.startswith(schemes):
            shown = url.split("://")[0] + "://…" if "://" in url else "a value without a scheme"
            raise _problem("must be a URL starting with {schemes}; got {shown}", schemes=" or ".join(schemes),
                           shown=shown)
        return url
    return BeforeValidator(checked)


def _csv(value: object) -> object:
    """Comma-separated, blanks dropped: `a, b,` is ("a", "b")."""
    return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value


Whole = Annotated[int, BeforeValidator(_whole)]
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Text = Annotated[str, BeforeValidator(_stripped)]
Switch = Annotated[bool, BeforeValidator(_switch)]
# NoDecode: pydantic-settings would otherwise read a tuple's variable as JSON.
CommaSeparated = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_csv)]


# ---------------------------------------------------------------- the settings


class Settings(BaseSettings):
    """Every setting with its default. `Settings()` is the defaults and `Settings(x=…)` the defaults
    but x, whatever the environment holds: load_settings is what reads variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True,
                                      populate_by_name=True)

    upstream_base_url: Annotated[str, _url("http://", "https://")] = OPENAI_BASE_URL
    upstream_api_key: str = Field(default="",  # the first variable set wins
                                  validation_alias=AliasChoices("ASSISTD_UPSTREAM_API_KEY", "OPENAI_API_KEY"))
    upstream_timeout: Number = Field(default=600.0, ge=0.001)
    upstream_connect_timeout: Number = Field(default=10.0, ge=0.001)
    upstream_max_tokens_param: Annotated[str, _one_of("max_completion_tokens", "max_tokens")] = "max_completion_tokens"
    data_dir: Path = Path("./data")
    database_url: Annotated[str, _url("sqlite:///", "postgresql://", "postgres://")] = ""
    api_keys: CommaSeparated = ()
    run_expires_seconds: Number = Field(default=600.0, ge=1)
    worker_concurrency: Whole = Field(default=1000, ge=1)
    heartbeat_seconds: Number = Field(default=2.0, ge=0.01)
    lease_seconds: Number = Field(default=20.0, ge=0.1)
    shutdown_grace_seconds: Number = Field(default=10.0, ge=0)
    redis_url: Annotated[str, _url("redis://", "rediss://", "unix://")] = ""
    database_pool_size: Whole = Field(default=20, ge=2)
    events_ttl_seconds: Number = Field(default=3600.0, ge=1)
    max_upload_bytes: Whole = Field(default=MAX_UPLOAD_BYTES, ge=1)
    embeddings_model: Text = ""
    embeddings_batch_size: Whole = Field(default=64, ge=1)
    # Without ASSISTD_RETRIEVAL: `hybrid` when an embeddings model is set (_retrieval_by_model).
    retrieval: Annotated[str, _one_of("hybrid", "lexical", "dense")] = "lexical"
    pgvector: Switch = True
    code_interpreter: Switch = True
    code_max_sessions: Whole = Field(default=8, ge=1)
    code_idle_seconds: Number = Field(default=3600.0, ge=1)
    code_call_seconds: Number = Field(default=120.0, ge=0.1)
    code_memory_mb: Whole = Field(default=1024, ge=64)
    code_cpu_seconds: Whole = Field(default=600, ge=1)
    code_processes: Whole = Field(default=64, ge=16)
    code_disk_mb: Whole = Field(default=256, ge=1)
    code_output_chars: Whole = Field(default=20_000, ge=100)
    code_dir: Path = Path("/tmp/assistd-code")
    # None: sandbox.default_python() picks `.venv-code` beside assistd's venv, else assistd's own.
    code_python: Path | None = None
    code_uid: Whole = Field(default=65533, ge=0)  # the host uid every sandboxed kernel runs as
    # None: as much as code_disk_mb
    code_files_out_mb: Annotated[int | None, BeforeValidator(_whole_or_unset)] = Field(default=None, ge=0)
    http_header_timeout: Number = Field(default=10.0, ge=0.1)
    http_body_timeout: Number = Field(default=30.0, ge=0.1)
    http_max_connections: Whole = Field(default=1000, ge=16)
    max_body_bytes: Whole = Field(default=MAX_BODY_BYTES, ge=1024)
    ingest_memory_mb: Whole = Field(default=1024, ge=64)
    ingest_seconds: Number = Field(default=300.0, ge=1)
    disk_reserve_mb: Whole = Field(default=64, ge=0)
    upstream_max_retries: Whole = Field(default=2, ge=0)
    sse_keepalive_seconds: Number = Field(default=15.0, ge=0.1)
    log_level: Annotated[str, _one_of("debug", "info", "warning", "error"), AfterValidator(str.upper)] = "INFO"
    log_format: Annotated[str, _one_of("text", "json")] = "text"
    metrics_host: Text = "127.0.0.1"
    metrics_port: Whole = Field(default=0, ge=0)
    host: Text = "127.0.0.1"
    port: Whole = Field(default=8000, ge=0)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: load_settings passes the variables of the mapping it was given, so a
        test's dict is never mixed with os.environ, and `Settings()` is always the defaults."""
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _retrieval_by_model(cls, data: Any) -> Any:
        """Unset, retrieval is `hybrid` when an embeddings model is set (else the field's `lexical`)."""
        if isinstance(data, dict) and not data.get("retrieval") and str(data.get("embeddings_model") or "").strip():
            return {**data, "retrieval": "hybrid"}
        return data

    @field_validator("retrieval")
    @classmethod
    def _retrieval_needs_a_model(cls, mode: str, info: ValidationInfo) -> str:
        """`dense` and `hybrid` rank by vectors, which only an embeddings model makes."""
        if mode != "lexical" and not info.data.get("embeddings_model"):
            raise _problem("must be lexical without ASSISTD_EMBEDDINGS_MODEL; got {mode}", mode=repr(mode))
        return mode

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


def variables(field: str) -> tuple[str, ...]:
    """The environment variables a field is read from, the first one set winning."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (ENV_PREFIX + field.upper(),)


# ---------------------------------------------------------------- reading the environment


class _Variables(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping rather than os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        """The mapping's variables as the source reads os.environ's: in lower case, empty ones left
        out (env_ignore_empty: an empty variable is an unset one). But names are matched as
        written, as they were before pydantic-settings: `assistd_port` is not ASSISTD_PORT."""
        return {name.lower(): value for name, value in self.environ.items()
                if name.isupper() and not (self.env_ignore_empty and value == "")}


def load_settings(env: Mapping[str, str] | None = None, *, only: Collection[str] | None = None) -> Settings:
    """Settings from the ASSISTD_* variables of `env` (os.environ when None), OPENAI_API_KEY being
    the upstream key's fallback. `only` reads just those fields (the others keep their defaults),
    for code that needs one setting where a bad unrelated one must not stop it."""
    environ = os.environ if env is None else env
    values = _Variables(environ)()
    if only is not None:
        values = {key: value for key, value in values.items() if _field(key) in only}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise _setting_error(exc, environ) from None


def _field(key: str | int) -> str:
    """The field a validation error's location names: its own name, or one of its variables."""
    return next((name for name in Settings.model_fields if key == name or key in variables(name)), str(key))


def _setting_error(exc: ValidationError, environ: Mapping[str, str]) -> SettingError:
    """pydantic's first error as one line naming the variable (not the field) and what is allowed."""
    error = exc.errors(include_url=False)[0]
    field = _field(error["loc"][0]) if error["loc"] else ""
    name = variables(field)[0] if field in Settings.model_fields else "a setting"
    if error["type"] == "setting":
        return SettingError(f"{name} {error['msg']}")
    if error["type"] in ("greater_than_equal", "finite_number"):
        return SettingError(_below_minimum(field, name, environ.get(name, error["input"])))
    return SettingError(f"{name}: {error['msg']}")  # no value shown: it may be a URL with a password


def _below_minimum(field: str, name: str, raw: object) -> str:
    info = Settings.model_fields[field]
    minimum = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), 0)
    if info.annotation is float:
        return f"{name} must be a number of at least {minimum:g}, got {raw!r}"
    return f"{name} must be at least {minimum}, got {raw!r}"
