"""Dense vectors for retrieval: from the upstream's `/v1/embeddings`, or from a local model.

`ASSISTD_EMBEDDINGS_MODEL` names the model: a plain name is asked of the upstream (same base
URL and key as chat), batched; `local:<path or name>` loads a sentence-transformers model in
this process (only where the `sentence_transformers` package is installed; nothing is
downloaded). Every vector is returned as unit-length float32, so a dot product is the cosine.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

import numpy as np
import openai

from assistd.config import Settings

LOCAL_PREFIX = "local:"


class EmbeddingError(Exception):
    """The model could not give vectors; `str()` says why, for a file's `last_error`."""


class Embedder(Protocol):
    model: str

    async def embed(self, texts: list[str]) -> np.ndarray: ...  # shape (len(texts), dims)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise EmbeddingError(f"The embeddings model returned vectors of shape {matrix.shape}.")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    scaled: np.ndarray = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return scaled


class UpstreamEmbedder:
    """`POST /v1/embeddings` on the upstream, `batch_size` texts a request."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.embeddings_model
        self.batch_size = settings.embeddings_batch_size
        self._client = openai.AsyncOpenAI(
            base_url=settings.upstream_base_url, api_key=settings.upstream_api_key or "none",
            timeout=settings.upstream_timeout, max_retries=2)

    async def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [text or " " for text in texts[start:start + self.batch_size]]
            try:
                answer = await self._client.embeddings.create(model=self.model, input=batch)
            except openai.APIError as exc:
                raise EmbeddingError(f"The embeddings model '{self.model}' failed: {exc}") from exc
            ordered = sorted(answer.data, key=lambda item: item.index)
            if len(ordered) != len(batch):
                raise EmbeddingError(f"The embeddings model returned {len(ordered)} vectors for {len(batch)} texts.")
            rows += [list(item.embedding) for item in ordered]
        return unit_rows(np.array(rows, dtype=np.float32)) if rows else np.zeros((0, 0), np.float32)

    async def close(self) -> None:
        await self._client.close()


class LocalEmbedder:
    """A sentence-transformers model in this process; encoding runs in a thread, one at a time."""

    def __init__(self, settings: Settings) -> None:
        self.model = settings.embeddings_model
        self.batch_size = settings.embeddings_batch_size
        self._source = self.model[len(LOCAL_PREFIX):]
        self._loaded: Any = None
        self._lock = threading.Lock()

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._loaded is None:
                from sentence_transformers import SentenceTransformer

                self._loaded = SentenceTransformer(self._source, device="cpu", local_files_only=True)
            return np.asarray(self._loaded.encode(texts, batch_size=self.batch_size, show_progress_bar=False))

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        try:
            return unit_rows(await asyncio.to_thread(self._encode, texts))
        except Exception as exc:
            raise EmbeddingError(f"The local embeddings model '{self._source}' failed: {exc}") from exc

    async def close(self) -> None:
        return None


def local_model_problem(settings: Settings) -> str | None:
    """Why a `local:` model can't be used here, or None."""
    if not settings.embeddings_model.startswith(LOCAL_PREFIX):
        return None
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return "the sentence_transformers package is not installed"
    return None


def open_embedder(settings: Settings) -> UpstreamEmbedder | LocalEmbedder | None:
    if not settings.embeddings_model:
        return None
    if settings.embeddings_model.startswith(LOCAL_PREFIX):
        return LocalEmbedder(settings)
    return UpstreamEmbedder(settings)
