"""`GET /v1/threads/{t}/runs/{r}` requests per second, relative to a bare Starlette JSON
endpoint served the same way (uvicorn, one process, same machine), both measured by wrk."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import httpx

from bench.common import PYTHON, ROOT, assistd, fake_upstream, free_port, wait_healthy

WRK = ["-t1", "-c32", "-d10s", "-H", "OpenAI-Beta: assistants=v2", "-H", "Authorization: Bearer bench"]


def _wrk(url: str) -> float:
    subprocess.run(["wrk", "-t1", "-c32", "-d2s", url], capture_output=True, check=True)  # warm-up
    out = subprocess.run(["wrk", *WRK, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} error responses from {url}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def _completed_run(base_url: str) -> str:
    headers = {"Authorization": "Bearer bench"}
    asst = httpx.post(f"{base_url}/assistants", json={"model": "bench"}, headers=headers).json()
    run = httpx.post(f"{base_url}/threads/runs", headers=headers, json={
        "assistant_id": asst["id"], "thread": {"messages": [{"role": "user", "content": "hi"}]}}).json()
    url = f"{base_url}/threads/{run['thread_id']}/runs/{run['id']}"
    for _ in range(200):
        if httpx.get(url, headers=headers).json()["status"] == "completed":
            return url
        time.sleep(0.05)
    raise RuntimeError("run did not complete")


def _bare() -> float:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/threads/thread_x/runs/run_x"
        wait_healthy(url, proc)
        return _wrk(url)
    finally:
        proc.terminate()
        proc.wait(10)


def run() -> str:
    if shutil.which("wrk") is None:
        return "### GET run RPS\n\nwrk is not installed (`apt-get install wrk`); not measured."
    with fake_upstream(tokens=3, chunk_delay=0.0) as upstream_url, assistd(upstream_url) as (base_url, _):
        assistd_rps = _wrk(_completed_run(base_url))
    bare_rps = _bare()
    return "\n".join([
        "### `GET /v1/threads/{t}/runs/{r}` throughput (wrk -t1 -c32 -d10s, SQLite)", "",
        "| server | requests/s |", "| --- | --- |",
        f"| bare Starlette JSON endpoint (baseline) | {bare_rps:,.0f} |",
        f"| assistd | {assistd_rps:,.0f} |",
        "", f"**ratio assistd / baseline: {assistd_rps / bare_rps:.2f}** (target ≥ 0.4)",
    ])


if __name__ == "__main__":
    print(run())
