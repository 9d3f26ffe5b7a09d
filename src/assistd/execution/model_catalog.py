"""The models the upstream serves, as OpenAI's `GET /v1/models` lists them, kept for a short
while so that clients picking a model don't cost an upstream request each.

An upstream without `/models` (or one that fails to answer) lists no models: clients that
only list to choose one then fall back on their own default instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import openai

from assistd.execution.upstream import Upstream

Obj = dict[str, Any]
log = logging.getLogger("assistd.models")
CACHE_SECONDS = 60.0
FAILED_CACHE_SECONDS = 10.0  # an upstream that failed is asked again sooner
TIMEOUT_SECONDS = 10.0
MAX_MODELS = 1000  # a hostile or broken upstream's list is cut here


class ModelCatalog:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._models: list[Obj] = []
        self._until = 0.0  # monotonic time until which _models holds
        self._lock = asyncio.Lock()

    async def models(self) -> list[Obj]:
        """The upstream's models (one request at a time, whatever the number of callers)."""
        async with self._lock:
            if time.monotonic() >= self._until:
                models = await self._fetch()
                self._models = models or []
                self._until = time.monotonic() + (CACHE_SECONDS if models is not None else FAILED_CACHE_SECONDS)
            return self._models

    async def model(self, model_id: str) -> Obj | None:
        return next((m for m in await self.models() if m["id"] == model_id), None)

    async def _fetch(self) -> list[Obj] | None:
        client = self.upstream.client.with_options(timeout=TIMEOUT_SECONDS, max_retries=0)
        try:
            body = await client.get("/models", cast_to=object)
        except openai.APIStatusError as exc:
            if exc.status_code not in (404, 405):
                log.warning("the upstream %s answered %s to GET /models: listing no models",
                            self.upstream.host, exc.status_code)
            return [] if exc.status_code in (404, 405) else None
        except openai.APIError as exc:
            log.warning("the upstream %s did not answer GET /models (%s): listing no models", self.upstream.host, exc)
            return None
        return parse_models(body)


def parse_models(body: Any) -> list[Obj]:
    """OpenAI's model objects from an upstream's answer; anything not shaped like one is left out."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return []
    models = []
    for entry in data[:MAX_MODELS]:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
            created = entry.get("created")
            models.append({"id": entry["id"], "object": "model",
                           "created": created if isinstance(created, int) else 0,
                           "owned_by": str(entry.get("owned_by") or "upstream")})
    return models
