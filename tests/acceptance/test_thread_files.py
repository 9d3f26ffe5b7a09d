"""Files that reach a thread for file_search: the vector_stores helper and message attachments.

A run waits for the thread's files to be ingested before it searches; the fake upstream's slow
embeddings keep a file `in_progress` long enough to see that (and to cancel during the wait).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import openai
import pytest

from tests.acceptance.test_vector_stores import upload, wait_ingested
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll, wait_for_status
from tests.support.server import AssistdServer

LIGHTHOUSE = b"The Hook Head lighthouse in Ireland has guided ships for over eight hundred years.\n"
SEARCH = Reply.tool_calls([("file_search", '{"query": "lighthouse Ireland ships"}')])
RESULTS = "Passages from the files"
ANSWER = "It has stood for eight centuries 【0†lighthouse.txt】."
SLOW_EMBEDDINGS = {"ASSISTD_EMBEDDINGS_MODEL": "fake-embedding-model"}


def script(upstream: FakeUpstream, question: str) -> None:
    upstream.on(question, SEARCH)
    upstream.on(RESULTS, Reply.text(ANSWER))


def cited_file(client: openai.OpenAI, thread_id: str) -> str:
    message = client.beta.threads.messages.list(thread_id).data[0]
    [citation] = message.content[0].text.annotations  # type: ignore[union-attr]
    return str(citation.file_citation.file_id)  # type: ignore[union-attr]


def test_thread_vector_stores_helper_makes_a_store_that_runs_search(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    file_id = upload(client, "lighthouse.txt", LIGHTHOUSE)
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "how old is the lighthouse"}],
        tool_resources={"file_search": {"vector_stores": [{"file_ids": [file_id], "metadata": {"from": "helper"}}]}})
    [store_id] = thread.tool_resources.file_search.vector_store_ids  # type: ignore[misc, union-attr]
    store = client.vector_stores.retrieve(store_id)
    assert store.metadata == {"from": "helper"} and store.file_counts.total == 1
    assert store.expires_after is not None and store.expires_after.days == 7
    assert client.beta.threads.retrieve(thread.id).tool_resources.file_search.vector_store_ids == [store_id]  # type: ignore[union-attr]
    script(upstream, "how old is the lighthouse")
    run = poll(client, thread.id, assistant_id=assistant(client, tools=[{"type": "file_search"}]).id)
    assert run.status == "completed" and cited_file(client, thread.id) == file_id


def test_a_helper_store_beside_store_ids_or_two_helpers_are_refused(client: openai.OpenAI) -> None:
    file_id = upload(client, "lighthouse.txt", LIGHTHOUSE)
    for file_search in ({"vector_stores": [{"file_ids": [file_id]}, {"file_ids": [file_id]}]},
                        {"vector_stores": [{"file_ids": [file_id]}], "vector_store_ids": ["vs_abc"]}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.beta.threads.create(tool_resources={"file_search": file_search})  # type: ignore[arg-type]
        assert refused.value.body["param"].startswith("tool_resources.file_search")  # type: ignore[index]


def test_an_attached_file_is_ingested_before_the_run_searches_it(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    upstream.embeddings_delay = 1.0  # the file stays in_progress for about a second
    srv = make_server(env=SLOW_EMBEDDINGS)
    with srv.client() as client:
        file_id = upload(client, "lighthouse.txt", LIGHTHOUSE)
        thread = client.beta.threads.create()
        client.beta.threads.messages.create(thread.id, role="user", content="tell me about the lighthouse",
                                            attachments=[{"file_id": file_id, "tools": [{"type": "file_search"}]}])
        [store_id] = client.beta.threads.retrieve(thread.id).tool_resources.file_search.vector_store_ids  # type: ignore[misc, union-attr]
        assert client.vector_stores.retrieve(store_id).file_counts.in_progress == 1
        script(upstream, "tell me about the lighthouse")
        run = poll(client, thread.id, assistant_id=assistant(client, tools=[{"type": "file_search"}]).id)
        assert run.status == "completed" and cited_file(client, thread.id) == file_id
        assert LIGHTHOUSE.decode().strip() in upstream.requests[-1].body["messages"][-1]["content"]
        # a second attachment goes into the same store
        other = upload(client, "second.txt", b"Another note about harbours.\n")
        client.beta.threads.messages.create(thread.id, role="user", content="and this",
                                            attachments=[{"file_id": other, "tools": [{"type": "file_search"}]}])
        assert wait_ingested(client, store_id).file_counts.completed == 2


def test_cancel_while_the_run_waits_for_ingestion_ends_it_cancelled_without_calling_the_model(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    upstream.embeddings_delay = 5.0
    srv = make_server(env=SLOW_EMBEDDINGS)
    with srv.client() as client:
        file_id = upload(client, "lighthouse.txt", LIGHTHOUSE)
        asst = assistant(client, tools=[{"type": "file_search"}])
        run = client.beta.threads.create_and_run(
            assistant_id=asst.id,
            thread={"messages": [{"role": "user", "content": "wait for it",
                                  "attachments": [{"file_id": file_id, "tools": [{"type": "file_search"}]}]}]})
        wait_for_status(client, run.thread_id, run.id, {"in_progress"})
        time.sleep(0.3)
        client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
        ended = wait_for_status(client, run.thread_id, run.id, {"cancelled", "completed", "failed"})
        assert ended.status == "cancelled"
        [store_id] = client.beta.threads.retrieve(run.thread_id).tool_resources.file_search.vector_store_ids  # type: ignore[misc, union-attr]
        assert client.vector_stores.retrieve(store_id).file_counts.in_progress == 1  # the wait was cut short
        assert upstream.requests == []  # the model was never asked
