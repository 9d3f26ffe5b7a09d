"""Ranking for vector store search: lexical, dense, or both fused into one list.

- `lexical`: the database's full-text ranking (storage/vector_stores.py), scores r/(r+1).
- `dense`: cosine similarity between the query's vector and each chunk's, scores clipped to 0–1.
- `hybrid`: reciprocal rank fusion of the two lists (k = 60), each list `CANDIDATES` deep.
  The fused score is divided by its largest possible value, so a chunk ranked first by both
  scores 1.0 and `score_threshold` keeps its 0–1 meaning.

Where no embeddings model is configured the mode is `lexical`. If the model fails when a
query is embedded, the search answers lexically and says so in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from assistd.execution.embeddings import Embedder, EmbeddingError
from assistd.storage.db import Database
from assistd.storage.vector_stores import VectorStoreStore

Obj = dict[str, Any]
RRF_K = 60
CANDIDATES = 50  # per list, before fusion

log = logging.getLogger("assistd.retrieval")


def fuse(lists: list[list[int]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked lists of ids: (id, score in 0–1), best first."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, item in enumerate(ranked):
            scores[item] = scores.get(item, 0.0) + 1.0 / (RRF_K + rank + 1)
    best = len(lists) / (RRF_K + 1)
    return sorted(((item, score / best) for item, score in scores.items()), key=lambda p: (-p[1], p[0]))


@dataclass
class Retriever:
    db: Database
    embedder: Embedder | None
    mode: str = "lexical"

    async def search(self, vector_store_id: str, queries: list[str], limit: int, threshold: float) -> list[Obj]:
        """The store's best chunks for the queries, best first, each with a 0–1 `score`."""
        stores = VectorStoreStore(self.db)
        await stores.open_for_search(vector_store_id)
        query_vectors = await self._embed_queries(queries)
        if query_vectors is None:
            rows = await stores.lexical(vector_store_id, queries, limit)
        elif self.mode == "dense":
            rows = await self._dense(stores, vector_store_id, query_vectors, limit)
        else:
            rows = await self._hybrid(stores, vector_store_id, queries, query_vectors, limit)
        return [r for r in rows if r["score"] >= threshold]

    async def _embed_queries(self, queries: list[str]) -> np.ndarray | None:
        if self.embedder is None or self.mode == "lexical" or not any(q.strip() for q in queries):
            return None
        try:
            return await self.embedder.embed(queries)
        except EmbeddingError as exc:
            log.warning("searching lexically only: %s", exc)
            return None

    async def _dense_hits(self, stores: VectorStoreStore, vector_store_id: str, query_vectors: np.ndarray,
                          limit: int) -> list[tuple[int, float]]:
        assert self.embedder is not None
        return await stores.nearest(vector_store_id, self.embedder.model, query_vectors, limit)

    async def _dense(self, stores: VectorStoreStore, vector_store_id: str, query_vectors: np.ndarray,
                     limit: int) -> list[Obj]:
        hits = await self._dense_hits(stores, vector_store_id, query_vectors, limit)
        rows = await stores.chunks([seq for seq, _ in hits])
        similarity = dict(hits)
        for row in rows:
            row["score"] = max(0.0, min(1.0, similarity[int(row["seq"])]))
        return rows

    async def _hybrid(self, stores: VectorStoreStore, vector_store_id: str, queries: list[str],
                      query_vectors: np.ndarray, limit: int) -> list[Obj]:
        depth = max(limit, CANDIDATES)
        lexical = await stores.lexical(vector_store_id, queries, depth)
        dense = await self._dense_hits(stores, vector_store_id, query_vectors, depth)
        fused = fuse([[int(r["seq"]) for r in lexical], [seq for seq, _ in dense]])[:limit]
        known = {int(r["seq"]): r for r in lexical}
        missing = [seq for seq, _ in fused if seq not in known]
        known.update({int(r["seq"]): r for r in await stores.chunks(missing)})
        rows = []
        for seq, score in fused:
            if seq in known:
                rows.append({**known[seq], "score": score})
        return rows
