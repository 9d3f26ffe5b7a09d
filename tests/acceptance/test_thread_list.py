"""GET /v1/threads, assistd's extension: threads newest first, filtered by assistant and metadata.

The openai SDK has no method for it, so these tests call it as raw HTTP with the SDK's headers.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai

from tests.support.fake_upstream import FakeUpstream
from tests.support.flows import assistant, poll
from tests.support.server import AssistdServer


def list_threads(server: AssistdServer, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.base_url}/threads", params=params, headers=server.headers, timeout=10)


def test_threads_are_listed_newest_first_and_paged(server: AssistdServer, client: openai.OpenAI) -> None:
    tag = {"suite": "paging-" + client.beta.threads.create().id}
    made = [client.beta.threads.create(metadata=tag).id for _ in range(3)]
    first = list_threads(server, limit=2, **{"metadata[suite]": tag["suite"]}).json()
    assert [t["id"] for t in first["data"]] == made[::-1][:2]
    assert first["object"] == "list" and first["has_more"] is True
    rest = list_threads(server, limit=2, after=first["last_id"], **{"metadata[suite]": tag["suite"]}).json()
    assert [t["id"] for t in rest["data"]] == [made[0]] and rest["has_more"] is False
    oldest = list_threads(server, order="asc", limit=1, **{"metadata[suite]": tag["suite"]}).json()
    assert oldest["data"][0]["id"] == made[0] and oldest["data"][0]["metadata"] == tag


def test_threads_filtered_by_the_assistant_that_ran_on_them(
        server: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    mine, other = assistant(client), assistant(client)
    ran = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    poll(client, ran.id, assistant_id=mine.id)
    client.beta.threads.create()
    listed = list_threads(server, assistant_id=mine.id).json()
    assert [t["id"] for t in listed["data"]] == [ran.id]
    assert list_threads(server, assistant_id=other.id).json()["data"] == []


def test_metadata_filters_must_all_match(server: AssistdServer, client: openai.OpenAI) -> None:
    suite = "pairs-" + client.beta.threads.create().id
    both = client.beta.threads.create(metadata={"suite": suite, "user": "ann", "odd": 'a"b\'c'}).id
    client.beta.threads.create(metadata={"suite": suite, "user": "bob"})
    listed = list_threads(server, **{"metadata[suite]": suite, "metadata[user]": "ann"}).json()
    assert [t["id"] for t in listed["data"]] == [both]
    quoted = list_threads(server, **{"metadata[odd]": 'a"b\'c'}).json()
    assert [t["id"] for t in quoted["data"]] == [both]


def test_bad_thread_list_queries_are_400_in_openai_shape(server: AssistdServer) -> None:
    for params in ({"limit": 0}, {"order": "up"}, {"after": "thread_nope"}, {"metadata": "x"},
                   {f"metadata[k{i}]": "v" for i in range(17)}):
        response = list_threads(server, **params)
        assert response.status_code == 400, params
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
