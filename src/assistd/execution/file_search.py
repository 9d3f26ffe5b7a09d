"""The `file_search` tool inside runs: assistd offers the model a `file_search` function,
answers its calls itself by searching the run's vector stores, and turns the model's
【n†file name】 markers into `file_citation` annotations.

A file_search call is recorded as OpenAI's `file_search` tool call, its results' text
always kept (the next upstream request is rebuilt from it).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from assistd.domain import objects as o
from assistd.domain.errors import InvalidRequest, NotFound
from assistd.execution.attachments import tool_resource_ids
from assistd.execution.retrieval import Retriever
from assistd.lifecycle.records import RunView, Step
from assistd.storage.store import Store
from assistd.storage.vector_stores import VectorStoreStore

Obj = dict[str, Any]

NAME = "file_search"
MAX_ROUNDS = 5  # searches in one run before the tool is no longer offered
DEFAULT_MAX_RESULTS = 20
DEFAULT_RANKER = "default_2024_08_21"  # what OpenAI reports for `auto`
INGESTION_WAIT_SECONDS = 600.0
INGESTION_POLL_SECONDS = 0.2
MARKER = re.compile(r"【(\d+)†([^】]*)】")

FUNCTION: Obj = {
    "type": "function",
    "function": {
        "name": NAME,
        "description": "Search the files available to you and return the passages that best match the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look for in the files."}},
            "required": ["query"],
        },
    },
}


def tool(run: RunView) -> Obj | None:
    """The run's `file_search` tool, if it has one."""
    return next((t for t in run.get("tools") or [] if t.get("type") == NAME), None)


def rounds(steps: Sequence[Step]) -> int:
    """How many file_search calls the run has made so far."""
    return len(o.tool_calls_of(steps, NAME))


async def vector_store_ids(store: Store, run: RunView) -> list[str]:
    """The vector stores of the assistant's and the thread's tool resources (union, in order)."""
    return await tool_resource_ids(store, run, NAME, "vector_store_ids")


class ExpiredStore(Exception):
    """A store the run would search has expired: as on OpenAI, the run fails."""

    code = "invalid_prompt"

    def __init__(self, vector_store_id: str) -> None:
        self.message = (f"Vector store '{vector_store_id}' has expired. Create a new vector store with the "
                        "same files and attach it in its place.")
        super().__init__(self.message)


async def check_live(store: Store, store_ids: list[str]) -> None:
    """Raise ExpiredStore for the first of the stores that has expired (deleted ones are skipped)."""
    if not store_ids:
        return
    expired = await VectorStoreStore(store.db).expired_among(store_ids)
    for vs_id in store_ids:
        if vs_id in expired:
            raise ExpiredStore(vs_id)


async def wait_for_ingestion(store: Store, store_ids: list[str]) -> None:
    """Wait while files of the stores are still being ingested (as OpenAI's runs do), at most
    INGESTION_WAIT_SECONDS; cancelling the run ends the wait at once."""
    if not store_ids:
        return
    vector_stores = VectorStoreStore(store.db)
    deadline = time.monotonic() + INGESTION_WAIT_SECONDS
    while time.monotonic() < deadline:
        if not await vector_stores.files_in_progress(store_ids):
            return
        await asyncio.sleep(INGESTION_POLL_SECONDS)


def ranking_options(run: RunView) -> Obj:
    options = ((tool(run) or {}).get(NAME) or {}).get("ranking_options") or {}
    ranker = options.get("ranker") or "auto"
    return {"ranker": DEFAULT_RANKER if ranker == "auto" else ranker,
            "score_threshold": float(options.get("score_threshold") or 0)}


def _query(arguments: str) -> str:
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return arguments
    return str(parsed.get("query") or "") if isinstance(parsed, dict) else str(parsed)


async def search(retriever: Retriever, run: RunView, store_ids: list[str], call: Obj) -> Obj:
    """Answer one of the model's file_search function calls: the `file_search` tool call object."""
    limit = int(((tool(run) or {}).get(NAME) or {}).get("max_num_results") or DEFAULT_MAX_RESULTS)
    ranking = ranking_options(run)
    query = _query(call["function"]["arguments"])
    rows: list[Obj] = []
    for vs_id in store_ids:
        try:
            rows += await retriever.search(vs_id, [query], limit, ranking["score_threshold"])
        except (NotFound, InvalidRequest):  # the store was deleted or has expired: nothing to find there
            continue
    rows.sort(key=lambda r: -r["score"])
    results = [{"file_id": r["file_id"], "file_name": r["filename"], "score": r["score"],
                "content": [{"type": "text", "text": r["text"]}]} for r in rows[:limit]]
    return {"id": call["id"], "type": NAME, NAME: {"ranking_options": ranking, "results": results}}


INCLUDE_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


def without_content(step: Obj) -> Obj:
    """A run step (or step delta) as shown when `include[]` does not ask for the results' text."""
    details = step.get("step_details") or (step.get("delta") or {}).get("step_details") or {}
    if not any(c.get("type") == NAME for c in details.get("tool_calls") or []):
        return step
    step = json.loads(json.dumps(step))  # a copy: the caller's object is left as it is
    details = step.get("step_details") or step["delta"]["step_details"]
    for call in details["tool_calls"]:
        for result in (call.get(NAME) or {}).get("results") or []:
            result.pop("content", None)
    return step


def tool_output(call: Obj) -> str:
    """The results as the model reads them, numbered for citing."""
    results = call[NAME]["results"]
    if not results:
        return "No matching passages were found in the files."
    sources = [f"[{n}] {r['file_name']}\n" + "".join(p["text"] for p in r.get("content") or [])
               for n, r in enumerate(results)]
    example = f"【0†{results[0]['file_name']}】"
    return ("Passages from the files, best first. When you use one, cite it right after the "
            f"statement as 【n†file name】, e.g. {example}.\n\n" + "\n\n".join(sources))


def chat_call(call: Obj) -> Obj:
    """A recorded file_search call as the assistant's function call in a later request."""
    return {"id": call["id"], "type": "function", "function": {"name": NAME, "arguments": "{}"}}


def citations(text: str, steps: Sequence[Step]) -> list[Obj]:
    """A `file_citation` for each 【n†name】 marker that names a result of the run's searches.

    The file name decides (the latest search first); failing that, result n of the latest search.
    """
    searches = [c[NAME]["results"] for c in o.tool_calls_of(steps, NAME)]
    if not searches:
        return []
    found: list[Obj] = []
    for match in MARKER.finditer(text):
        file_id = _cited(searches, int(match.group(1)), match.group(2).strip())
        if file_id is not None:
            found.append({"type": "file_citation", "text": match.group(0), "file_citation": {"file_id": file_id},
                          "start_index": match.start(), "end_index": match.end()})
    return found


def _cited(searches: list[list[Obj]], n: int, name: str) -> str | None:
    for results in reversed(searches):
        for result in results:
            if result["file_name"] == name:
                return str(result["file_id"])
    latest = searches[-1]
    return str(latest[n]["file_id"]) if n < len(latest) else None
