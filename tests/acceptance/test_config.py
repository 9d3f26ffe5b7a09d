"""Settings and the command line: API keys, loopback-only without keys, health, docs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from assistd.config import Settings, variables

ROOT = Path(__file__).resolve().parents[2]


def test_api_keys_are_required_when_configured(make_server: Any) -> None:
    server = make_server(env={"ASSISTD_API_KEYS": "key-one, key-two"})
    assert server.client(api_key="key-two").beta.assistants.list().object == "list"
    with pytest.raises(openai.AuthenticationError) as caught:
        server.client(api_key="wrong-key-123").beta.assistants.list()
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    response = httpx.get(f"{server.base_url}/assistants")
    assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.base_url.removesuffix("/v1") + "/healthz").status_code == 200


def test_serve_refuses_a_public_address_without_api_keys(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ASSISTD_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "assistd", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "ASSISTD_API_KEYS" in result.stderr


def test_every_setting_is_documented() -> None:
    read = {name for field in Settings.model_fields for name in variables(field) if name.startswith("ASSISTD_")}
    documented = (ROOT / "docs/settings.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert read, "no settings found"
    for name in read:
        assert f"`{name}`" in documented, f"{name} is missing from docs/settings.md"
        assert name in readme, f"{name} is missing from README.md"


def test_migrate_command_is_idempotent(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ASSISTD_DATA_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-m", "assistd", "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False)
    second = subprocess.run([sys.executable, "-m", "assistd", "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False)
    versions = sorted(int(f.name.split("_")[0]) for f in (ROOT / "src/assistd/storage/migrations").glob("*.sql"))
    assert first.returncode == 0 and f"applied migrations: {versions}" in first.stdout
    assert second.returncode == 0 and "up to date" in second.stdout


@pytest.mark.parametrize(("args", "env", "says"), [
    (["worker"], {}, "needs PostgreSQL"),
    (["serve", "--no-worker"], {}, "needs PostgreSQL"),
    (["worker"], {"ASSISTD_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test"}, "needs ASSISTD_REDIS_URL"),
], ids=["worker-on-sqlite", "api-only-on-sqlite", "worker-without-redis"])
def test_split_roles_refuse_a_setup_they_cannot_work_in(tmp_path: Path, args: list[str], env: dict[str, str],
                                                        says: str) -> None:
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("ASSISTD_")},
                "ASSISTD_DATA_DIR": str(tmp_path), **env}
    result = subprocess.run([sys.executable, "-m", "assistd", *args], env=full_env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert says in result.stderr
