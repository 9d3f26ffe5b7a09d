"""A user's install: `pip install` of assistd (not editable) into a fresh venv, then
`assistd setup-sandbox`, then a run whose code the sandbox executes. Slow: one test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.geteuid() != 0, reason="code_interpreter's sandbox needs root")
def test_a_pip_installed_assistd_offers_code_interpreter_after_setup_sandbox(upstream: FakeUpstream) -> None:
    # Under /tmp and o+x, as a user's install must be: the sandbox uid must reach the environment.
    tmp_path = Path(tempfile.mkdtemp(prefix="assistd-install-"))
    tmp_path.chmod(0o711)
    try:
        _install_and_run(tmp_path, upstream)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _install_and_run(tmp_path: Path, upstream: FakeUpstream) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True, timeout=600,
                   cwd=tmp_path)
    setup = subprocess.run([str(venv / "bin" / "assistd"), "setup-sandbox", "--quiet"], capture_output=True,
                           text=True, timeout=600, cwd=tmp_path, check=False)
    assert setup.returncode == 0, setup.stderr
    assert "code_interpreter can run here" in setup.stdout
    assert (tmp_path / ".venv-code" / "bin" / "python").exists()  # beside the venv, where assistd looks
    assert shutil.which("bwrap")

    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ASSISTD_")},
           "ASSISTD_DATA_DIR": str(tmp_path / "data"), "ASSISTD_UPSTREAM_BASE_URL": upstream.base_url,
           "ASSISTD_PORT": str(port), "ASSISTD_CODE_DIR": f"/tmp/assistd-setup-{port}"}
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen([str(venv / "bin" / "assistd")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        upstream.on("installed sandbox", Reply.tool_calls([("code_interpreter", json.dumps({"code": "print(6 * 7)"}))]))
        upstream.enqueue(Reply.text("It is 42."))
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "installed sandbox"}])
        run = poll(client, thread.id, assistant_id=assistant(client, tools=[{"type": "code_interpreter"}]).id)
        assert run.status == "completed", (tmp_path / "server.log").read_text()
        steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
        calls = [c for s in steps if s.step_details.type == "tool_calls" for c in s.step_details.tool_calls]
        outputs = [o.logs for o in calls[0].code_interpreter.outputs if o.type == "logs"]  # type: ignore[union-attr]
        assert "".join(outputs).strip() == "42"
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(env["ASSISTD_CODE_DIR"], ignore_errors=True)  # its sessions were closed at stop


def _wait_ready(root: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "assistd exited"
        try:
            if httpx.get(f"{root}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("assistd did not become ready")
