"""Small steps the acceptance tests repeat, written with the official openai SDK."""

from __future__ import annotations

import time
from typing import Any

import openai
from openai.types.beta import Assistant
from openai.types.beta.threads import Run

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TERMINAL = {"completed", "failed", "cancelled", "incomplete", "expired"}


def assistant(client: openai.OpenAI, **kw: Any) -> Assistant:
    kw.setdefault("model", "fake-model")
    kw.setdefault("instructions", "You are a test assistant.")
    return client.beta.assistants.create(**kw)


def wait_for_status(
    client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str], timeout: float = 15.0
) -> Run:
    """Poll the run until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in statuses:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} stayed {run.status}, wanted {statuses}")
        time.sleep(0.02)


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def poll(client: openai.OpenAI, thread_id: str, **kw: Any) -> Run:
    return client.beta.threads.runs.create_and_poll(thread_id=thread_id, poll_interval_ms=20, **kw)
