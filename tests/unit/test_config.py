"""load_settings: how each kind of variable is read, and the one-line error a bad value gives
(naming the ASSISTD_ variable, never the field, and never a URL's password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistd.config import SettingError, Settings, load_settings

BAD_VALUES = [
    ({"ASSISTD_WORKER_CONCURRENCY": "0"}, "ASSISTD_WORKER_CONCURRENCY must be at least 1, got '0'"),
    ({"ASSISTD_WORKER_CONCURRENCY": "1.5"}, "ASSISTD_WORKER_CONCURRENCY must be a whole number, got '1.5'"),
    ({"ASSISTD_UPSTREAM_TIMEOUT": "soon"}, "ASSISTD_UPSTREAM_TIMEOUT must be a number, got 'soon'"),
    ({"ASSISTD_UPSTREAM_TIMEOUT": "0"}, "ASSISTD_UPSTREAM_TIMEOUT must be a number of at least 0.001, got '0'"),
    ({"ASSISTD_UPSTREAM_TIMEOUT": "inf"}, "ASSISTD_UPSTREAM_TIMEOUT must be a number of at least 0.001, got 'inf'"),
    ({"ASSISTD_SHUTDOWN_GRACE_SECONDS": "nan"}, "ASSISTD_SHUTDOWN_GRACE_SECONDS must be a number of at least 0, got 'nan'"),
    ({"ASSISTD_CODE_FILES_OUT_MB": "-1"}, "ASSISTD_CODE_FILES_OUT_MB must be at least 0, got '-1'"),
    ({"ASSISTD_LOG_FORMAT": "XML"}, "ASSISTD_LOG_FORMAT must be one of text, json; got 'xml'"),
    ({"ASSISTD_PGVECTOR": "maybe"}, "ASSISTD_PGVECTOR must be one of auto, on, off, true, false, 1, 0; got 'maybe'"),
    ({"ASSISTD_DATABASE_URL": "mysql://root:pw@db/x"},
     "ASSISTD_DATABASE_URL must be a URL starting with sqlite:/// or postgresql:// or postgres://; got mysql://…"),
    ({"ASSISTD_REDIS_URL": "localhost:6379"},
     "ASSISTD_REDIS_URL must be a URL starting with redis:// or rediss:// or unix://; got a value without a scheme"),
    ({"ASSISTD_RETRIEVAL": "dense"}, "ASSISTD_RETRIEVAL must be lexical without ASSISTD_EMBEDDINGS_MODEL; got 'dense'"),
    ({"ASSISTD_CODE_UID": "nobody"}, "ASSISTD_CODE_UID must be a whole number, got 'nobody'"),
]


@pytest.mark.parametrize(("env", "says"), BAD_VALUES, ids=["=".join(*env.items()) for env, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_variable_and_what_is_allowed(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingError) as caught:
        load_settings(env)
    assert str(caught.value) == says
    assert "pw" not in str(caught.value)


def test_an_empty_variable_is_an_unset_one() -> None:
    names = ("ASSISTD_PORT", "ASSISTD_UPSTREAM_TIMEOUT", "ASSISTD_API_KEYS", "ASSISTD_LOG_LEVEL", "ASSISTD_DATA_DIR")
    assert load_settings(dict.fromkeys(names, "")) == Settings()


def test_each_kind_of_variable_is_read_as_before() -> None:
    settings = load_settings({
        "ASSISTD_API_KEYS": " key-one, key-two,, ", "ASSISTD_LOG_LEVEL": " Debug ", "ASSISTD_PGVECTOR": "OFF",
        "ASSISTD_CODE_INTERPRETER": "1", "ASSISTD_HOST": " 0.0.0.0 ", "ASSISTD_DATA_DIR": "/srv/assistd",
        "ASSISTD_UPSTREAM_TIMEOUT": "1e3", "ASSISTD_PORT": " 9000 ", "ASSISTD_CODE_FILES_OUT_MB": " ",
    })
    assert settings.api_keys == ("key-one", "key-two")
    assert (settings.log_level, settings.pgvector, settings.code_interpreter) == ("DEBUG", False, True)
    assert (settings.host, settings.data_dir, settings.upstream_timeout) == ("0.0.0.0", Path("/srv/assistd"), 1000.0)
    assert (settings.port, settings.code_files_out_mb) == (9000, None)
    assert settings.resolved_database_url == "sqlite:////srv/assistd/assistd.db" and not settings.is_postgres


def test_the_upstream_key_falls_back_to_openai_api_key() -> None:
    assert load_settings({"OPENAI_API_KEY": "sk-openai"}).upstream_api_key == "sk-openai"
    assert load_settings({"ASSISTD_UPSTREAM_API_KEY": "", "OPENAI_API_KEY": "sk-openai"}).upstream_api_key == "sk-openai"
    both = {"ASSISTD_UPSTREAM_API_KEY": "sk-ours", "OPENAI_API_KEY": "sk-openai"}
    assert load_settings(both).upstream_api_key == "sk-ours"


def test_retrieval_is_hybrid_by_default_only_with_an_embeddings_model() -> None:
    assert load_settings({}).retrieval == "lexical"
    assert load_settings({"ASSISTD_EMBEDDINGS_MODEL": "text-embedding-3-small"}).retrieval == "hybrid"
    assert load_settings({"ASSISTD_EMBEDDINGS_MODEL": "m", "ASSISTD_RETRIEVAL": "Dense"}).retrieval == "dense"


def test_a_given_mapping_is_read_alone_and_settings_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSISTD_PORT", "1234")
    assert load_settings({}).port == Settings().port == 8000
    assert load_settings().port == 1234


def test_names_are_matched_as_written() -> None:
    assert load_settings({"assistd_port": "1234"}).port == 8000


def test_only_reads_just_the_fields_asked_for() -> None:
    env = {"ASSISTD_CODE_UID": "1000", "ASSISTD_WORKER_CONCURRENCY": "0"}
    assert load_settings(env, only=("code_uid",)) == Settings(code_uid=1000)
