"""/v1/vector_stores: stores, their files, file batches, and search.

Files are ingested in the background (see execution/ingest.py): they are created
`in_progress` and the routes only ever read what the ingester stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from assistd.http.common import deleted, ok, page, params, path, runtime
from assistd.http.models import ListQuery, Model, WithMetadata, check_pairs
from assistd.storage.vector_stores import VectorStoreStore

Obj = dict[str, Any]
AttributeValue = str | bool | int | float
# Rows fetched before an attribute filter is applied to them.
FILTERED_CANDIDATES = 1000


def check_attributes(value: dict[str, AttributeValue] | None) -> dict[str, AttributeValue] | None:
    check_pairs(value, "attributes")
    return value


class StaticChunking(Model):
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap_at_most_half(self) -> StaticChunking:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError("chunk_overlap_tokens must not exceed half of max_chunk_size_tokens")
        return self


class AutoChunkingParam(Model):
    type: Literal["auto"]


class StaticChunkingParam(Model):
    type: Literal["static"]
    static: StaticChunking


ChunkingStrategy = Annotated[AutoChunkingParam | StaticChunkingParam, Field(discriminator="type")]


class ExpiresAfter(Model):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class VectorStoreCreate(WithMetadata):
    name: str | None = None
    description: str | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None


class VectorStoreUpdate(WithMetadata):
    name: str | None = None
    expires_after: ExpiresAfter | None = None


class WithAttributes(Model):
    attributes: dict[str, AttributeValue] | None = None

    _attributes = field_validator("attributes")(check_attributes)


class VectorStoreFileCreate(WithAttributes):
    file_id: str
    chunking_strategy: ChunkingStrategy | None = None


class FileAttributesUpdate(WithAttributes):
    attributes: dict[str, AttributeValue] | None


class FileBatchCreate(WithAttributes):
    file_ids: list[str] | None = Field(default=None, min_length=1, max_length=2000)
    files: list[VectorStoreFileCreate] | None = Field(default=None, min_length=1, max_length=2000)
    chunking_strategy: ChunkingStrategy | None = None

    @model_validator(mode="after")
    def _one_of_ids_or_files(self) -> FileBatchCreate:
        if (self.file_ids is None) == (self.files is None):
            raise ValueError("give exactly one of file_ids and files")
        return self


class VectorStoreFileListQuery(ListQuery):
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None


class ComparisonFilter(Model):
    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    key: str
    value: AttributeValue | list[str | float]


class CompoundFilter(Model):
    type: Literal["and", "or"]
    filters: list[Annotated[ComparisonFilter | CompoundFilter, Field(union_mode="left_to_right")]]


class RankingOptions(Model):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(default=0.0, ge=0, le=1)


class SearchRequest(Model):
    query: str | Annotated[list[str], Field(min_length=1)]
    max_num_results: int = Field(default=10, ge=1, le=50)
    filters: ComparisonFilter | CompoundFilter | None = None
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False


_COMPARE: dict[str, Callable[[Any, Any], object]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
    "in": lambda a, b: a in b, "nin": lambda a, b: a not in b,
}


def attributes_match(condition: ComparisonFilter | CompoundFilter, attributes: Obj) -> bool:
    """Whether a file's attributes pass a search filter; a missing key or a type mismatch fails."""
    if isinstance(condition, CompoundFilter):
        results = (attributes_match(inner, attributes) for inner in condition.filters)
        return all(results) if condition.type == "and" else any(results)
    if condition.key not in attributes:
        return condition.type in ("ne", "nin")
    try:
        return bool(_COMPARE[condition.type](attributes[condition.key], condition.value))
    except TypeError:
        return False


def _store(request: Request) -> VectorStoreStore:
    return VectorStoreStore(runtime(request).store.db)


def _strategy(model: Any) -> Obj | None:
    strategy = getattr(model, "chunking_strategy", None)
    return None if strategy is None else strategy.model_dump(mode="json")


# ---------------------------------------------------------------- stores


async def create(request: Request) -> Response:
    parsed, data = await params(request, VectorStoreCreate)
    return ok(await _store(request).create(data, parsed.file_ids))


async def list_(request: Request) -> Response:
    pages, _ = page(request)
    return ok(await _store(request).list(pages))


async def retrieve(request: Request) -> Response:
    return ok(await _store(request).get(path(request, "vector_store_id")))


async def update(request: Request) -> Response:
    _, data = await params(request, VectorStoreUpdate)
    return ok(await _store(request).update(path(request, "vector_store_id"), data))


async def delete(request: Request) -> Response:
    vector_store_id = path(request, "vector_store_id")
    await _store(request).delete(vector_store_id)
    return deleted(vector_store_id, "vector_store")


# ---------------------------------------------------------------- files


async def create_file(request: Request) -> Response:
    parsed, _ = await params(request, VectorStoreFileCreate)
    return ok(await _store(request).add_file(path(request, "vector_store_id"), parsed.file_id,
                                             _strategy(parsed), parsed.attributes))


async def list_files(request: Request) -> Response:
    pages, query = page(request, VectorStoreFileListQuery)
    assert isinstance(query, VectorStoreFileListQuery)
    return ok(await _store(request).list_files(path(request, "vector_store_id"), pages, query.filter))


async def retrieve_file(request: Request) -> Response:
    return ok(await _store(request).get_file(path(request, "vector_store_id"), path(request, "file_id")))


async def update_file(request: Request) -> Response:
    parsed, _ = await params(request, FileAttributesUpdate)
    return ok(await _store(request).update_file(path(request, "vector_store_id"), path(request, "file_id"),
                                                parsed.attributes))


async def delete_file(request: Request) -> Response:
    file_id = path(request, "file_id")
    await _store(request).delete_file(path(request, "vector_store_id"), file_id)
    return deleted(file_id, "vector_store.file")


async def file_content(request: Request) -> Response:
    chunks = await _store(request).file_chunks(path(request, "vector_store_id"), path(request, "file_id"))
    return JSONResponse({"object": "vector_store.file_content.page",
                         "data": [{"type": "text", "text": text} for text in chunks],
                         "has_more": False, "next_page": None})


# ---------------------------------------------------------------- file batches


async def create_batch(request: Request) -> Response:
    parsed, _ = await params(request, FileBatchCreate)
    if parsed.files is not None:
        entries = [(f.file_id, _strategy(f), f.attributes) for f in parsed.files]
    else:
        entries = [(file_id, _strategy(parsed), parsed.attributes) for file_id in parsed.file_ids or []]
    return ok(await _store(request).create_batch(path(request, "vector_store_id"), entries))


async def retrieve_batch(request: Request) -> Response:
    return ok(await _store(request).get_batch(path(request, "vector_store_id"), path(request, "batch_id")))


async def cancel_batch(request: Request) -> Response:
    return ok(await _store(request).cancel_batch(path(request, "vector_store_id"), path(request, "batch_id")))


async def list_batch_files(request: Request) -> Response:
    pages, query = page(request, VectorStoreFileListQuery)
    assert isinstance(query, VectorStoreFileListQuery)
    vector_store_id, batch_id = path(request, "vector_store_id"), path(request, "batch_id")
    store = _store(request)
    await store.get_batch(vector_store_id, batch_id)
    return ok(await store.list_files(vector_store_id, pages, query.filter, batch_id))


# ---------------------------------------------------------------- search


def _result(row: Obj) -> Obj:
    return {"file_id": row["file_id"], "filename": row["filename"], "score": row["score"],
            "attributes": row["attributes"], "content": [{"type": "text", "text": row["text"]}]}


async def search(request: Request) -> Response:
    parsed, _ = await params(request, SearchRequest)
    queries = [parsed.query] if isinstance(parsed.query, str) else parsed.query
    threshold = parsed.ranking_options.score_threshold if parsed.ranking_options else 0.0
    wanted = parsed.max_num_results
    limit = wanted if parsed.filters is None else FILTERED_CANDIDATES
    rows = await runtime(request).retriever.search(path(request, "vector_store_id"), queries, limit, threshold)
    if parsed.filters is not None:
        rows = [r for r in rows if attributes_match(parsed.filters, r["attributes"])]
    return JSONResponse({"object": "vector_store.search_results.page", "search_query": queries,
                         "data": [_result(r) for r in rows[:wanted]], "has_more": False, "next_page": None})


_STORE = "/vector_stores/{vector_store_id}"
routes = [
    Route("/vector_stores", create, methods=["POST"]),
    Route("/vector_stores", list_, methods=["GET"]),
    Route(_STORE, retrieve, methods=["GET"]),
    Route(_STORE, update, methods=["POST"]),
    Route(_STORE, delete, methods=["DELETE"]),
    Route(f"{_STORE}/files", create_file, methods=["POST"]),
    Route(f"{_STORE}/files", list_files, methods=["GET"]),
    Route(f"{_STORE}/files/{{file_id}}", retrieve_file, methods=["GET"]),
    Route(f"{_STORE}/files/{{file_id}}", update_file, methods=["POST"]),
    Route(f"{_STORE}/files/{{file_id}}", delete_file, methods=["DELETE"]),
    Route(f"{_STORE}/files/{{file_id}}/content", file_content, methods=["GET"]),
    Route(f"{_STORE}/file_batches", create_batch, methods=["POST"]),
    Route(f"{_STORE}/file_batches/{{batch_id}}", retrieve_batch, methods=["GET"]),
    Route(f"{_STORE}/file_batches/{{batch_id}}/cancel", cancel_batch, methods=["POST"]),
    Route(f"{_STORE}/file_batches/{{batch_id}}/files", list_batch_files, methods=["GET"]),
    Route(f"{_STORE}/search", search, methods=["POST"]),
]
