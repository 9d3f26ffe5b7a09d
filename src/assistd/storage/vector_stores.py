"""Vector stores, their files and the files' text chunks, with lexical search over the chunks.

A vector store's `file_counts`, `usage_bytes` and `status` are computed from its files' rows
on every read, so nothing has to be kept in step. Chunks are written in the same transaction
as the guarded `in_progress → completed` change of their file: a file is searchable exactly
when it is `completed`.

Lexical search: FTS5 with bm25 on SQLite, `tsvector` with `ts_rank_cd` on PostgreSQL. Both
raw scores are turned into 0–1 the same way, `r / (r + 1)` (PostgreSQL's normalization 32).

Dense vectors live beside their chunks (a float32 BLOB/BYTEA). A store's vectors are read into
one matrix that is kept in memory while the store's `vectors_version` says it is still true; a
search is then one matrix product. The ranking itself is `execution/retrieval.py`'s.
"""

from __future__ import annotations

import builtins  # the store has a `list` method: its annotations name the type this way
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from assistd.domain import objects as o
from assistd.domain.errors import InvalidRequest, NotFound, invalid, not_found
from assistd.domain.ids import new_id, now
from assistd.storage import pgvector
from assistd.storage.db import Database, Executor, expand_in
from assistd.storage.pages import PageParams, fetch_page, list_object

Obj = dict[str, Any]

STORE_COLUMNS = "id, created_at, name, metadata, expires_after, last_active_at"
FILE_COLUMNS = ("id, vector_store_id, batch_id, created_at, status, usage_bytes, last_error, "
                "chunking_strategy, attributes")
BATCH_COLUMNS = "id, vector_store_id, created_at, cancelled"
_WORD = re.compile(r"\w+")
Entry = tuple[str, Obj | None, Obj | None]  # a file to attach: id, chunking strategy, attributes
VECTOR_CACHE_BYTES = 1 << 30  # matrices kept in memory, all stores together


@dataclass(frozen=True)
class VectorSet:
    """A store's vectors of one model: row i of `matrix` is the chunk `seqs[i]`."""

    version: int
    seqs: np.ndarray
    matrix: np.ndarray


_vector_cache: OrderedDict[tuple[int, str, str], VectorSet] = OrderedDict()
# PostgreSQL's lexical ranking: per store, its chunk count, chunks per lexeme, and when taken
@dataclass(frozen=True)
class WordStats:
    """A store's chunk count and chunks per lexeme, as of `version` (taken at `taken_at`)."""

    version: int
    total: int
    counts: dict[str, int]
    taken_at: float


_word_stats: OrderedDict[tuple[int, str], WordStats] = OrderedDict()
WORD_STATS_STORES = 64
WORD_STATS_SECONDS = 30.0


def _tsquery_term(lexeme: str) -> str:
    """A lexeme as a tsquery operand, quoted (so nothing in it is read as an operator)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _remember(key: tuple[int, str, str], found: VectorSet) -> None:
    _vector_cache[key] = found
    _vector_cache.move_to_end(key)
    while sum(v.matrix.nbytes for v in _vector_cache.values()) > VECTOR_CACHE_BYTES and len(_vector_cache) > 1:
        _vector_cache.popitem(last=False)


def top_similar(matrix: np.ndarray, queries: np.ndarray, limit: int) -> list[tuple[int, float]]:
    """(row, similarity) of the `limit` rows most similar to any of the queries, best first."""
    if matrix.size == 0 or queries.size == 0 or matrix.shape[1] != queries.shape[1]:
        return []
    similarity = (matrix @ queries.T).max(axis=1)
    limit = min(limit, len(similarity))
    top = np.argpartition(-similarity, limit - 1)[:limit]
    order = top[np.argsort(-similarity[top], kind="stable")]
    return [(int(row), float(similarity[row])) for row in order]


def expired_error(vector_store_id: str) -> InvalidRequest:
    return invalid(f"Vector store '{vector_store_id}' has expired and can no longer be searched.")


def _file_not_found(vector_store_id: str, file_id: str) -> NotFound:
    return NotFound(f"No file found with id '{file_id}' in vector store '{vector_store_id}'.")


async def _counts(db: Executor, store_ids: list[str]) -> dict[str, tuple[dict[str, int], int]]:
    """Per store: how many of its files are in each status, and their total usage in bytes."""
    if not store_ids:
        return {}
    params: dict[str, Any] = {}
    sql = expand_in(
        "SELECT vector_store_id, status, COUNT(*) AS n, COALESCE(SUM(usage_bytes), 0) AS b "
        "FROM vector_store_files WHERE vector_store_id IN (:ids) GROUP BY vector_store_id, status",
        "ids", store_ids, params,
    )
    found: dict[str, tuple[dict[str, int], int]] = {i: ({}, 0) for i in store_ids}
    for row in await db.fetchall(sql, **params):
        by_status, usage = found[row["vector_store_id"]]
        by_status[row["status"]] = int(row["n"])
        found[row["vector_store_id"]] = (by_status, usage + int(row["b"]))
    return found


def search_terms(queries: list[str]) -> list[str]:
    """The distinct words of the queries, which any matching chunk must share one of."""
    seen: dict[str, None] = {}
    for query in queries:
        for word in _WORD.findall(query.lower()):
            seen.setdefault(word, None)
    return list(seen)


class VectorStoreStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ stores

    async def _objects(self, rows: builtins.list[Obj]) -> builtins.list[Obj]:
        counts = await _counts(self.db, [r["id"] for r in rows])
        return [o.vector_store_object(r, *counts[r["id"]]) for r in rows]

    async def _row(self, vector_store_id: str) -> Obj:
        row = await self.db.fetchone(f"SELECT {STORE_COLUMNS} FROM vector_stores WHERE id = :id",
                                     id=vector_store_id)
        if row is None:
            raise not_found("vector store", vector_store_id)
        return row

    async def get(self, vector_store_id: str) -> Obj:
        return (await self._objects([await self._row(vector_store_id)]))[0]

    async def create(self, params: Obj, file_ids: builtins.list[str]) -> Obj:
        row = o.new_vector_store_row(params)
        strategy = params.get("chunking_strategy")
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO vector_stores (id, created_at, name, metadata, expires_after, last_active_at) "
                "VALUES (:id, :created_at, :name, :metadata, :expires_after, :last_active_at)", **row)
            await _insert_files(tx, row["id"], [(file_id, strategy, None) for file_id in file_ids], None)
        return await self.get(row["id"])

    async def list(self, page: PageParams) -> Obj:
        rows, more = await fetch_page(self.db, "vector_stores", STORE_COLUMNS, "1 = 1", {}, page)
        return list_object(await self._objects(rows), more)

    async def update(self, vector_store_id: str, params: Obj) -> Obj:
        changes: Obj = {"last_active_at": now()}
        if "name" in params:
            changes["name"] = params["name"] or ""
        if params.get("metadata") is not None:
            changes["metadata"] = o.dumps(params["metadata"])
        if "expires_after" in params:
            value = params["expires_after"]
            changes["expires_after"] = None if value is None else o.dumps(value)
        assignments = ", ".join(f"{key} = :{key}" for key in changes)
        count = await self.db.execute(f"UPDATE vector_stores SET {assignments} WHERE id = :id",
                                      id=vector_store_id, **changes)
        if not count:
            raise not_found("vector store", vector_store_id)
        return await self.get(vector_store_id)

    async def touch(self, vector_store_id: str) -> None:
        """Keep `last_active_at` (and so `expires_at`) true; at most one write a second."""
        async with self.db.transaction(inline=True) as tx:  # every file_search of every run: keep it short
            await tx.execute("UPDATE vector_stores SET last_active_at = :t WHERE id = :id AND last_active_at < :t",
                             t=now(), id=vector_store_id)

    async def delete(self, vector_store_id: str) -> None:
        async with self.db.transaction() as tx:
            # Files before chunks: on PostgreSQL this waits for an ingester finishing one of
            # them, so the chunks it commits are seen, and deleted, here.
            await tx.execute("DELETE FROM vector_store_files WHERE vector_store_id = :vs", vs=vector_store_id)
            await self._delete_chunks(tx, vector_store_id, None)
            await tx.execute("DELETE FROM vector_store_file_batches WHERE vector_store_id = :vs",
                             vs=vector_store_id)
            count = await tx.execute("DELETE FROM vector_stores WHERE id = :vs", vs=vector_store_id)
            if not count:
                raise not_found("vector store", vector_store_id)

    async def _delete_chunks(self, tx: Executor, vector_store_id: str, file_id: str | None) -> None:
        await delete_chunks(tx, self.db.dialect, vector_store_id, file_id)

    # ------------------------------------------------------------ files

    async def add_file(self, vector_store_id: str, file_id: str, strategy: Obj | None,
                       attributes: Obj | None) -> Obj:
        await self.live(vector_store_id)
        if not await _file_exists(self.db, file_id):
            raise not_found("file", file_id)
        async with self.db.transaction() as tx:
            await _insert_files(tx, vector_store_id, [(file_id, strategy, attributes)], None)
        await self.touch(vector_store_id)
        return await self.get_file(vector_store_id, file_id)

    async def get_file(self, vector_store_id: str, file_id: str) -> Obj:
        await self._row(vector_store_id)
        row = await self.db.fetchone(
            f"SELECT {FILE_COLUMNS} FROM vector_store_files WHERE vector_store_id = :vs AND id = :f",
            vs=vector_store_id, f=file_id)
        if row is None:
            raise _file_not_found(vector_store_id, file_id)
        return o.vector_store_file_object(row)

    async def list_files(self, vector_store_id: str, page: PageParams, status: str | None,
                         batch_id: str | None = None) -> Obj:
        await self._row(vector_store_id)
        scope, params = "vector_store_id = :vs", {"vs": vector_store_id, "st": status, "b": batch_id}
        if status:
            scope += " AND status = :st"
        if batch_id:
            scope += " AND batch_id = :b"
        rows, more = await fetch_page(self.db, "vector_store_files", FILE_COLUMNS, scope, params, page)
        return list_object([o.vector_store_file_object(r) for r in rows], more)

    async def update_file(self, vector_store_id: str, file_id: str, attributes: Obj | None) -> Obj:
        count = await self.db.execute(
            "UPDATE vector_store_files SET attributes = :a WHERE vector_store_id = :vs AND id = :f",
            a=None if attributes is None else o.dumps(attributes), vs=vector_store_id, f=file_id)
        if not count:
            await self._row(vector_store_id)
            raise _file_not_found(vector_store_id, file_id)
        return await self.get_file(vector_store_id, file_id)

    async def delete_file(self, vector_store_id: str, file_id: str) -> None:
        """Detach a file: its row and its chunks go in one transaction."""
        await self._row(vector_store_id)
        async with self.db.transaction() as tx:
            count = await tx.execute("DELETE FROM vector_store_files WHERE vector_store_id = :vs AND id = :f",
                                     vs=vector_store_id, f=file_id)
            if not count:
                raise _file_not_found(vector_store_id, file_id)
            await self._delete_chunks(tx, vector_store_id, file_id)

    async def file_chunks(self, vector_store_id: str, file_id: str) -> builtins.list[str]:
        await self.get_file(vector_store_id, file_id)
        rows = await self.db.fetchall(
            "SELECT text FROM vector_store_chunks WHERE vector_store_id = :vs AND file_id = :f ORDER BY position",
            vs=vector_store_id, f=file_id)
        return [r["text"] for r in rows]

    # ------------------------------------------------------------ batches

    async def create_batch(self, vector_store_id: str, entries: builtins.list[Entry]) -> Obj:
        """Attach files as one batch; each entry is (file id, chunking strategy, attributes)."""
        await self.live(vector_store_id)
        batch_id = new_id("vsfb")
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO vector_store_file_batches (id, vector_store_id, created_at, cancelled) "
                "VALUES (:id, :vs, :t, 0)", id=batch_id, vs=vector_store_id, t=now())
            await _insert_files(tx, vector_store_id, entries, batch_id)
        await self.touch(vector_store_id)
        return await self.get_batch(vector_store_id, batch_id)

    async def get_batch(self, vector_store_id: str, batch_id: str) -> Obj:
        row = await self.db.fetchone(
            f"SELECT {BATCH_COLUMNS} FROM vector_store_file_batches WHERE id = :b AND vector_store_id = :vs",
            b=batch_id, vs=vector_store_id)
        if row is None:
            await self._row(vector_store_id)
            raise not_found("file batch", batch_id)
        rows = await self.db.fetchall(
            "SELECT status, COUNT(*) AS n FROM vector_store_files WHERE batch_id = :b GROUP BY status", b=batch_id)
        return o.file_batch_object(row, {r["status"]: int(r["n"]) for r in rows})

    async def cancel_batch(self, vector_store_id: str, batch_id: str) -> Obj:
        """Files of the batch still `in_progress` end `cancelled` (an ingester's finish then fails)."""
        await self.get_batch(vector_store_id, batch_id)
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE vector_store_file_batches SET cancelled = 1 WHERE id = :b", b=batch_id)
            await tx.execute(
                "UPDATE vector_store_files SET status = 'cancelled', claimed_by = NULL, claimed_at = NULL "
                "WHERE batch_id = :b AND status = 'in_progress'", b=batch_id)
        return await self.get_batch(vector_store_id, batch_id)

    # ------------------------------------------------------------ search

    async def open_for_search(self, vector_store_id: str) -> None:
        """Check the store can be searched (it exists and has not expired), and mark it active."""
        await self.live(vector_store_id)
        await self.touch(vector_store_id)

    async def live(self, vector_store_id: str) -> Obj:
        """The store's row, unless it has expired (then InvalidRequest: it can't be used any more)."""
        row = await self._row(vector_store_id)
        if o.store_expired(row):
            raise expired_error(vector_store_id)
        return row

    async def purge_expired(self) -> builtins.list[str]:
        """Delete the chunks of stores that have expired; returns those stores' ids."""
        rows = await self.db.fetchall(
            "SELECT s.id, s.expires_after, s.last_active_at FROM vector_stores s WHERE s.expires_after IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM vector_store_chunks c WHERE c.vector_store_id = s.id)")
        expired = [r["id"] for r in rows if o.store_expired(r)]
        for vector_store_id in expired:
            async with self.db.transaction() as tx:
                await self._delete_chunks(tx, vector_store_id, None)
        return expired

    async def lexical(self, vector_store_id: str, queries: builtins.list[str], limit: int) -> builtins.list[Obj]:
        """The best-matching chunks of the store's completed files by their words, best first."""
        terms = search_terms(queries)
        if not terms:
            return []
        if self.db.dialect == "sqlite":
            rows = await self._search_sqlite(vector_store_id, terms, limit)
        else:
            rows = await self._search_postgres(vector_store_id, terms, limit)
        return _with_attributes(rows)

    async def vectors(self, vector_store_id: str, model: str) -> VectorSet:
        """The store's vectors of `model`, from memory while its `vectors_version` is unchanged."""
        key = (id(self.db), vector_store_id, model)
        row = await self.db.fetchone("SELECT vectors_version FROM vector_stores WHERE id = :vs", vs=vector_store_id)
        version = int(row["vectors_version"]) if row else -1
        cached = _vector_cache.get(key)
        if cached is not None and cached.version == version:
            _vector_cache.move_to_end(key)
            return cached
        rows = await self.db.fetchall(
            "SELECT seq, embedding FROM vector_store_chunks WHERE vector_store_id = :vs AND embedding_model = :m "
            "ORDER BY seq", vs=vector_store_id, m=model)
        seqs = np.array([int(r["seq"]) for r in rows], dtype=np.int64)
        vectors = [np.frombuffer(bytes(r["embedding"]), dtype="<f4") for r in rows]
        matrix = np.vstack(vectors) if vectors else np.zeros((0, 0), np.float32)
        found = VectorSet(version, seqs, matrix)
        _remember(key, found)
        return found

    async def nearest(self, vector_store_id: str, model: str, queries: np.ndarray,
                      limit: int) -> builtins.list[tuple[int, float]]:
        """(chunk seq, cosine similarity) of the `limit` chunks most similar to any query, best first."""
        if getattr(self.db, "pgvector", False):
            return await self._nearest_pgvector(vector_store_id, model, queries, limit)
        found = await self.vectors(vector_store_id, model)
        return [(int(found.seqs[row]), similarity) for row, similarity in top_similar(found.matrix, queries, limit)]

    async def _nearest_pgvector(self, vector_store_id: str, model: str, queries: np.ndarray,
                                limit: int) -> builtins.list[tuple[int, float]]:
        best: dict[int, float] = {}
        for query in queries:
            rows = await self.db.fetchall(
                "SELECT seq, 1 - distance AS similarity FROM (SELECT seq, embedding <=> "
                "(SELECT CAST(CAST(:q AS TEXT) AS vector)) AS distance FROM vector_store_chunk_vectors "
                "WHERE vector_store_id = :vs AND model = :m AND vector_dims(embedding) = :d) AS scored "
                "ORDER BY distance, seq LIMIT :n",
                q=pgvector.literal([float(x) for x in query]), vs=vector_store_id, m=model,
                d=int(queries.shape[1]), n=limit)
            for row in rows:
                seq, similarity = int(row["seq"]), float(row["similarity"])
                best[seq] = max(similarity, best.get(seq, -1.0))
        return sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]

    async def chunks(self, seqs: builtins.list[int]) -> builtins.list[Obj]:
        """Search rows (file, text, attributes, file name) of the given chunks, in the given order."""
        if not seqs:
            return []
        params: Obj = {}
        sql = expand_in(
            "SELECT c.seq, c.file_id, c.text, f.attributes, COALESCE(fl.filename, '') AS filename "
            "FROM vector_store_chunks c "
            "JOIN vector_store_files f ON f.vector_store_id = c.vector_store_id AND f.id = c.file_id "
            "LEFT JOIN files fl ON fl.id = c.file_id WHERE c.seq IN (:seqs) AND f.status = 'completed'",
            "seqs", seqs, params)
        by_seq = {int(r["seq"]): r for r in await self.db.fetchall(sql, **params)}
        return _with_attributes([by_seq[seq] for seq in seqs if seq in by_seq])

    async def _search_sqlite(self, vector_store_id: str, terms: builtins.list[str], limit: int) -> builtins.list[Obj]:
        match = " OR ".join(f'"{term}"' for term in terms)  # \w+ words: no quotes inside
        rows = await self.db.fetchall(
            "SELECT c.seq, c.file_id, c.text, f.attributes, COALESCE(fl.filename, '') AS filename, "
            "-bm25(vector_store_chunks_fts) AS raw "
            "FROM vector_store_chunks_fts JOIN vector_store_chunks c ON c.seq = vector_store_chunks_fts.rowid "
            "JOIN vector_store_files f ON f.vector_store_id = c.vector_store_id AND f.id = c.file_id "
            "LEFT JOIN files fl ON fl.id = c.file_id "
            "WHERE vector_store_chunks_fts MATCH :q AND c.vector_store_id = :vs AND f.status = 'completed' "
            "ORDER BY raw DESC, c.seq LIMIT :n",
            q=match, vs=vector_store_id, n=limit)
        for row in rows:
            raw = max(0.0, float(row.pop("raw")))
            row["score"] = raw / (raw + 1.0)
        return rows

    async def _search_postgres(self, vector_store_id: str, terms: builtins.list[str], limit: int) -> builtins.list[Obj]:
        """BM25-like: each query word's `ts_rank` (normalized by the chunk's length) weighted by
        its inverse document frequency in the store, summed. Without the weights, common words
        ("file", "function") count as much as the rare word a question is about. Words in more
        than a quarter of the chunks still weigh in, but don't make a chunk a candidate."""
        total, weights = await self._idf_weights(vector_store_id, terms)
        if not weights:
            return []
        rare = [lexeme for lexeme, (_, df) in weights.items() if df <= total // 4] or list(weights)
        params: Obj = {"vs": vector_store_id, "n": limit, "any": " | ".join(_tsquery_term(x) for x in rare)}
        ranks = []
        for i, (lexeme, (weight, _)) in enumerate(weights.items()):
            params[f"t{i}"], params[f"w{i}"] = _tsquery_term(lexeme), weight
            ranks.append(f":w{i} * ts_rank(c.tsv, CAST(:t{i} AS tsquery), 1)")
        rows = await self.db.fetchall(
            "SELECT c.seq, c.file_id, c.text, f.attributes, COALESCE(fl.filename, '') AS filename, "
            f"({' + '.join(ranks)})::float8 AS raw "
            "FROM vector_store_chunks c "
            "JOIN vector_store_files f ON f.vector_store_id = c.vector_store_id AND f.id = c.file_id "
            "LEFT JOIN files fl ON fl.id = c.file_id "
            "WHERE c.tsv @@ CAST(:any AS tsquery) AND c.vector_store_id = :vs "
            "AND f.status = 'completed' ORDER BY raw DESC, c.seq LIMIT :n", **params)
        for row in rows:
            raw = max(0.0, float(row.pop("raw")))
            row["score"] = raw / (raw + 1.0)
        return rows

    async def _idf_weights(self, vector_store_id: str, terms: builtins.list[str]) -> tuple[int, dict[str, tuple[float, int]]]:
        """The store's chunk count, and (BM25 idf, chunk count) of each lexeme of the query
        words that the store has."""
        stats, fresh = await self._store_words(vector_store_id)
        total, counts = stats.total, stats.counts
        rows = await self.db.fetchall("SELECT lexeme FROM unnest(to_tsvector('english', :q))", q=" ".join(terms))
        weights: dict[str, tuple[float, int]] = {}
        for row in rows:
            # a word the (slightly old) counts don't know may be in chunks added since: take it as rare
            df = counts.get(row["lexeme"], 0 if fresh else 1)
            if df:
                weights[row["lexeme"]] = (math.log(1.0 + (total - df + 0.5) / (df + 0.5)), df)
        return total, weights

    async def _store_words(self, vector_store_id: str) -> tuple[WordStats, bool]:
        """How many chunks the store has, and in how many each lexeme is (ts_stat, one pass).
        Kept in memory; taken again once the store's chunks changed, at most every
        WORD_STATS_SECONDS (idf moves little while files are being added)."""
        key = (id(self.db), vector_store_id)
        row = await self.db.fetchone("SELECT vectors_version FROM vector_stores WHERE id = :vs", vs=vector_store_id)
        version = int(row["vectors_version"]) if row else -1
        known = _word_stats.get(key)
        if known is not None and (known.version == version or time.monotonic() - known.taken_at < WORD_STATS_SECONDS):
            _word_stats.move_to_end(key)
            return known, known.version == version
        stats = await self.db.fetchall(
            "SELECT word, ndoc FROM ts_stat(format('SELECT tsv FROM vector_store_chunks WHERE vector_store_id = %L', "
            "CAST(:vs AS TEXT)))", vs=vector_store_id)
        size = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM vector_store_chunks WHERE vector_store_id = :vs", vs=vector_store_id)
        taken = WordStats(version, int(size["n"]) if size else 0, {r["word"]: int(r["ndoc"]) for r in stats},
                          time.monotonic())
        _word_stats[key] = taken
        _word_stats.move_to_end(key)
        while len(_word_stats) > WORD_STATS_STORES:
            _word_stats.popitem(last=False)
        return taken, True

    # ------------------------------------------------------------ ingestion

    async def release_claims(self, holder: str | None = None) -> None:
        """Forget the claims of `holder` (an ingester stopping), or every claim (SQLite at start:
        no other process can hold one)."""
        mine = "" if holder is None else " AND claimed_by = :w"
        await self.db.execute("UPDATE vector_store_files SET claimed_by = NULL, claimed_at = NULL "
                              f"WHERE status = 'in_progress'{mine}", **({} if holder is None else {"w": holder}))

    async def expired_among(self, store_ids: builtins.list[str]) -> set[str]:
        """Those of the stores that have expired (deleted ones are not among them)."""
        params: Obj = {}
        sql = expand_in("SELECT id, expires_after, last_active_at FROM vector_stores WHERE id IN (:ids)",
                        "ids", store_ids, params)
        return {row["id"] for row in await self.db.fetchall(sql, **params) if o.store_expired(row)}

    async def files_in_progress(self, store_ids: builtins.list[str]) -> int:
        """How many files of the stores are still being ingested."""
        params: Obj = {}
        sql = expand_in("SELECT COUNT(*) AS n FROM vector_store_files WHERE status = 'in_progress' "
                        "AND vector_store_id IN (:ids)", "ids", store_ids, params)
        row = await self.db.fetchone(sql, **params)
        return int(row["n"]) if row else 0

    async def claim_files(self, holder: str, limit: int, at: float, stale_before: float) -> builtins.list[Obj]:
        """Take up to `limit` pending files: unclaimed, or claimed by a holder whose lease lapsed."""
        # A read first: an idle ingester polls twice a second, and a write transaction each
        # time would take SQLite's one writer (or a PostgreSQL transaction) for nothing.
        if not await self.db.fetchone(
                "SELECT 1 AS pending FROM vector_store_files WHERE status = 'in_progress' "
                "AND (claimed_by IS NULL OR claimed_at < :stale) LIMIT 1", stale=stale_before):
            return []
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        async with self.db.transaction() as tx:
            rows: builtins.list[Obj] = await tx.fetchall(
                "WITH picked AS MATERIALIZED (SELECT seq FROM vector_store_files WHERE status = 'in_progress' "
                f"AND (claimed_by IS NULL OR claimed_at < :stale) ORDER BY seq LIMIT :n{skip_locked}) "
                "UPDATE vector_store_files SET claimed_by = :w, claimed_at = :at "
                "WHERE status = 'in_progress' AND seq IN (SELECT seq FROM picked) "
                "RETURNING id, vector_store_id, chunking_strategy",
                w=holder, at=at, stale=stale_before, n=limit)
        return rows

    async def renew_claims(self, holder: str, at: float) -> None:
        async with self.db.transaction(inline=True) as tx:  # a lease renewal: one small update
            await tx.execute("UPDATE vector_store_files SET claimed_at = :at "
                             "WHERE claimed_by = :w AND status = 'in_progress'", at=at, w=holder)

    async def finish_file(self, holder: str, vector_store_id: str, file_id: str, chunks: builtins.list[str],
                          vectors: np.ndarray | None = None, model: str | None = None) -> bool:
        """Store a file's chunks (and their vectors of `model`, if given) and mark it `completed`,
        only if `holder` still holds it."""
        usage = sum(len(chunk.encode()) for chunk in chunks)
        async with self.db.transaction() as tx:
            count = await tx.execute(
                "UPDATE vector_store_files SET status = 'completed', usage_bytes = :b, claimed_by = NULL, "
                "claimed_at = NULL WHERE vector_store_id = :vs AND id = :f AND claimed_by = :w "
                "AND status = 'in_progress'", b=usage, vs=vector_store_id, f=file_id, w=holder)
            if not count:
                return False
            await self._delete_chunks(tx, vector_store_id, file_id)
            rows = [{"vs": vector_store_id, "f": file_id, "p": position, "t": text,
                     "e": None if vectors is None else vectors[position].astype("<f4").tobytes(),
                     "m": None if vectors is None else model} for position, text in enumerate(chunks)]
            await tx.executemany(
                "INSERT INTO vector_store_chunks (vector_store_id, file_id, position, text, embedding, "
                "embedding_model) VALUES (:vs, :f, :p, :t, :e, :m)", rows)
            if vectors is not None and getattr(self.db, "pgvector", False):
                await tx.executemany(
                    "INSERT INTO vector_store_chunk_vectors (seq, vector_store_id, model, embedding) "
                    "SELECT seq, vector_store_id, :m, CAST(CAST(:v AS TEXT) AS vector) FROM vector_store_chunks "
                    "WHERE vector_store_id = :vs AND file_id = :f AND position = :p",
                    [{"vs": vector_store_id, "f": file_id, "p": position, "m": model,
                      "v": pgvector.literal([float(x) for x in vectors[position]])} for position in range(len(chunks))])
            if self.db.dialect == "sqlite":
                await tx.execute("INSERT INTO vector_store_chunks_fts (rowid, text) SELECT seq, text "
                                 "FROM vector_store_chunks WHERE vector_store_id = :vs AND file_id = :f",
                                 vs=vector_store_id, f=file_id)
        return True

    async def fail_file(self, holder: str, vector_store_id: str, file_id: str, error: Obj) -> bool:
        count = await self.db.execute(
            "UPDATE vector_store_files SET status = 'failed', last_error = :e, claimed_by = NULL, "
            "claimed_at = NULL WHERE vector_store_id = :vs AND id = :f AND claimed_by = :w "
            "AND status = 'in_progress'", e=o.dumps(error), vs=vector_store_id, f=file_id, w=holder)
        return count > 0


async def delete_chunks(tx: Executor, dialect: str, vector_store_id: str, file_id: str | None) -> None:
    """Delete chunks (and their index entries); the store's `vectors_version` moves on."""
    await tx.execute("UPDATE vector_stores SET vectors_version = vectors_version + 1 WHERE id = :vs",
                     vs=vector_store_id)
    scope = "vector_store_id = :vs" + (" AND file_id = :f" if file_id else "")
    params = {"vs": vector_store_id, **({"f": file_id} if file_id else {})}
    if dialect == "sqlite":
        await tx.execute("DELETE FROM vector_store_chunks_fts WHERE rowid IN "
                         f"(SELECT seq FROM vector_store_chunks WHERE {scope})", **params)
    await tx.execute(f"DELETE FROM vector_store_chunks WHERE {scope}", **params)


async def detach_everywhere(tx: Executor, dialect: str, file_id: str) -> None:
    """Remove a file from every vector store it is in, with its chunks (the File is being deleted)."""
    rows = await tx.fetchall("DELETE FROM vector_store_files WHERE id = :f RETURNING vector_store_id", f=file_id)
    for row in rows:
        await delete_chunks(tx, dialect, row["vector_store_id"], file_id)


def _with_attributes(rows: list[Obj]) -> list[Obj]:
    for row in rows:
        row["attributes"] = o.loads_or_none(row["attributes"]) or {}
    return rows


async def _insert_files(tx: Executor, vector_store_id: str, entries: list[Entry], batch_id: str | None) -> None:
    """Attach files (each must exist in /v1/files); a file already attached stays as it is."""
    for file_id, strategy, attributes in entries:
        if not await _file_exists(tx, file_id):
            raise invalid(f"Invalid 'file_ids': no file found with id '{file_id}'.", "file_ids")
        await tx.execute(
            "INSERT INTO vector_store_files (id, vector_store_id, batch_id, created_at, status, chunking_strategy, "
            "attributes) VALUES (:f, :vs, :b, :t, 'in_progress', :cs, :a) "
            "ON CONFLICT (vector_store_id, id) DO NOTHING",
            f=file_id, vs=vector_store_id, b=batch_id, t=now(), cs=o.dumps(o.resolved_chunking(strategy)),
            a=None if attributes is None else o.dumps(attributes))


async def _file_exists(db: Executor, file_id: str) -> bool:
    row = await db.fetchone("SELECT id FROM files WHERE id = :f AND (expires_at IS NULL OR expires_at > :t)",
                            f=file_id, t=now())
    return row is not None
