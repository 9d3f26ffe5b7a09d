"""Dense retrieval: chunk vectors from the upstream's /v1/embeddings, alone or fused with lexical search.

The fake upstream's embeddings are bags of hashed words in which a few synonyms share a word
("automobile" and "car"), so a dense search can find what a lexical one can't.
"""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.acceptance.test_vector_stores import found_ids, upload, wait_ingested
from tests.support.fake_upstream import FakeUpstream
from tests.support.server import AssistdServer, pgvector_available

CAR = b"The car needs new winter tires before the first snow.\n"
CAT = b"The cat sleeps all afternoon on the warm windowsill.\n"
BREAD = b"Sourdough bread rises with wild yeast kept alive in a starter.\n"
EMBEDDINGS = {"ASSISTD_EMBEDDINGS_MODEL": "fake-embedding-model", "ASSISTD_EMBEDDINGS_BATCH_SIZE": "2"}


def store_of(client: openai.OpenAI, files: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    ids = {name: upload(client, name, data) for name, data in files.items()}
    store = client.vector_stores.create(name="dense", file_ids=list(ids.values()))
    wait_ingested(client, store.id)
    return store.id, ids


def test_hybrid_search_finds_a_synonym_that_lexical_search_misses(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    lexical = make_server()
    hybrid = make_server(env=EMBEDDINGS)
    for srv in (lexical, hybrid):
        with srv.client() as client:
            store_id, ids = store_of(client, {"car.txt": CAR, "cat.txt": CAT, "bread.txt": BREAD})
            found = found_ids(client, store_id, "automobile")
            if srv is lexical:
                assert found == []
            else:
                assert found[0] == ids["car.txt"]
                results = list(client.vector_stores.search(store_id, query="automobile"))
                assert all(0 <= r.score <= 1 for r in results)
                assert results[0].score > results[-1].score
    # three one-chunk files, two texts a request, plus the query: no request over the batch size
    assert upstream.embedding_batches and max(upstream.embedding_batches) <= 2


@pytest.mark.parametrize("pgvector", ["auto", "off"])
def test_dense_mode_ranks_by_meaning_and_honours_the_score_threshold(
        make_server: Callable[..., AssistdServer], backend: str, pgvector: str) -> None:
    if backend == "sqlite" and pgvector == "off":
        pytest.skip("ASSISTD_PGVECTOR is a PostgreSQL setting")
    srv = make_server(env={**EMBEDDINGS, "ASSISTD_RETRIEVAL": "dense", "ASSISTD_PGVECTOR": pgvector})
    with srv.client() as client:
        store_id, ids = store_of(client, {"car.txt": CAR, "cat.txt": CAT})
        results = list(client.vector_stores.search(store_id, query="a feline on the windowsill"))
        assert results[0].file_id == ids["cat.txt"]
        top = results[0].score
        assert found_ids(client, store_id, "a feline on the windowsill",
                         ranking_options={"score_threshold": min(1.0, top + 0.01)}) == []
    uses_pgvector = "dense search by pgvector" in srv.log_tail(200)
    expected = backend == "postgresql" and pgvector == "auto" and pgvector_available()
    assert uses_pgvector == expected


def test_a_file_whose_embeddings_fail_ends_failed_and_the_others_stay_searchable(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    srv = make_server(env=EMBEDDINGS)
    with srv.client() as client:
        store_id, ids = store_of(client, {"car.txt": CAR})
        upstream.fail_embeddings = True
        broken = upload(client, "cat.txt", CAT)
        client.vector_stores.files.create(vector_store_id=store_id, file_id=broken)
        store = wait_ingested(client, store_id)
        assert (store.file_counts.completed, store.file_counts.failed) == (1, 1)
        failed = client.vector_stores.files.retrieve(broken, vector_store_id=store_id)
        assert failed.status == "failed" and failed.last_error is not None
        assert failed.last_error.code == "server_error"
        assert "fake-embedding-model" in failed.last_error.message
        # while the model is down, a search still answers, lexically
        assert found_ids(client, store_id, "winter tires") == [ids["car.txt"]]


def test_a_detached_file_disappears_from_dense_results_at_once(make_server: Callable[..., AssistdServer]) -> None:
    srv = make_server(env={**EMBEDDINGS, "ASSISTD_RETRIEVAL": "dense"})
    with srv.client() as client:
        store_id, ids = store_of(client, {"car.txt": CAR, "cat.txt": CAT})
        assert ids["car.txt"] in found_ids(client, store_id, "automobile")  # the store's vectors are now cached
        client.vector_stores.files.delete(ids["car.txt"], vector_store_id=store_id)
        assert ids["car.txt"] not in found_ids(client, store_id, "automobile")
        client.files.delete(ids["cat.txt"])  # deleting the File removes it from every store
        assert found_ids(client, store_id, "kitty") == []
        assert client.vector_stores.retrieve(store_id).file_counts.total == 0
