"""Assistants, threads and messages: CRUD, lists, validation and the error envelope."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.support.flows import WEATHER_TOOL, assistant
from tests.support.spec import assert_matches_schema


def test_assistant_lifecycle(client: openai.OpenAI) -> None:
    created = assistant(client, name="Helper", description="d", tools=[WEATHER_TOOL], metadata={"a": "1"},
                        response_format={"type": "json_object"}, temperature=0.5)
    assert created.id.startswith("asst_") and created.object == "assistant"
    assert_matches_schema(created, "AssistantObject")
    assert client.beta.assistants.retrieve(created.id) == created
    updated = client.beta.assistants.update(created.id, name="Renamed", metadata={"b": "2"})
    assert updated.name == "Renamed" and updated.metadata == {"b": "2"} and updated.description == "d"
    assert updated.tools == created.tools
    deleted = client.beta.assistants.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "assistant.deleted", True)
    assert_matches_schema(deleted, "DeleteAssistantResponse")
    with pytest.raises(openai.NotFoundError) as caught:
        client.beta.assistants.retrieve(created.id)
    assert caught.value.body == {"message": f"No assistant found with id '{created.id}'.",
                                 "type": "invalid_request_error", "param": None, "code": None}


def test_lists_paginate_with_limit_order_after_and_before(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": f"m{i}"} for i in range(5)])
    asc = client.beta.threads.messages.list(thread.id, order="asc").data
    ids = [m.id for m in asc]
    assert [m.content[0].text.value for m in asc] == ["m0", "m1", "m2", "m3", "m4"]  # type: ignore[union-attr]
    desc = client.beta.threads.messages.list(thread.id, limit=2)
    assert [m.id for m in desc.data] == [ids[4], ids[3]] and desc.has_more
    # the SDK's page class keeps first_id and last_id from the JSON but does not declare them
    assert desc.first_id == ids[4] and desc.last_id == ids[3]  # type: ignore[attr-defined]
    after = client.beta.threads.messages.list(thread.id, limit=2, after=ids[3])
    assert [m.id for m in after.data] == [ids[2], ids[1]]
    before = client.beta.threads.messages.list(thread.id, limit=2, order="asc", before=ids[3])
    assert [m.id for m in before.data] == [ids[1], ids[2]]
    every = [m.id for m in client.beta.threads.messages.list(thread.id, limit=1, order="asc")]
    assert every == ids  # the SDK's auto-pagination walks `after`
    assert_matches_schema(desc, "ListMessagesResponse")


def test_list_assistants_has_the_list_shape(client: openai.OpenAI) -> None:
    a = assistant(client)
    page = client.beta.assistants.list(limit=100)
    assert_matches_schema(page, "ListAssistantsResponse")
    assert a.id in [x.id for x in page.data]


def test_thread_lifecycle_with_initial_messages(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"},
                                               {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
        metadata={"user": "42"},
    )
    assert thread.id.startswith("thread_") and thread.metadata == {"user": "42"}
    assert_matches_schema(thread, "ThreadObject")
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.thread_id == thread.id and [p.type for p in message.content] == ["text", "image_url"]
    assert_matches_schema(message, "MessageObject")
    assert client.beta.threads.update(thread.id, metadata={"user": "43"}).metadata == {"user": "43"}
    deleted = client.beta.threads.delete(thread.id)
    assert (deleted.object, deleted.deleted) == ("thread.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.list(thread.id)


def test_message_lifecycle(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    message = client.beta.threads.messages.create(thread.id, role="user", content="hello", metadata={"x": "y"})
    assert message.id.startswith("msg_") and message.status == "completed" and message.metadata == {"x": "y"}
    assert client.beta.threads.messages.retrieve(message.id, thread_id=thread.id) == message
    updated = client.beta.threads.messages.update(message.id, thread_id=thread.id, metadata={"x": "z"})
    assert updated.metadata == {"x": "z"}
    deleted = client.beta.threads.messages.delete(message.id, thread_id=thread.id)
    assert (deleted.object, deleted.deleted) == ("thread.message.deleted", True)
    assert_matches_schema(deleted, "DeleteMessageResponse")
    with pytest.raises(openai.NotFoundError) as caught:
        client.beta.threads.messages.retrieve(message.id, thread_id=thread.id)
    assert caught.value.body["message"] == f"No message found with id '{message.id}'."  # type: ignore[index]


BAD_ASSISTANTS: list[tuple[dict[str, Any], str]] = [
    ({}, "model"),
    ({"model": "m", "temperature": 2.5}, "temperature"),
    ({"model": "m", "top_p": 1.5}, "top_p"),
    ({"model": "m", "name": "n" * 257}, "name"),
    ({"model": "m", "description": "d" * 513}, "description"),
    ({"model": "m", "instructions": "i" * 256_001}, "instructions"),
    ({"model": "m", "tools": [{"type": "code_interpreter"}] * 129}, "tools"),
    ({"model": "m", "tools": [{"type": "telepathy"}]}, "tools[0]"),
    ({"model": "m", "metadata": {"k" * 65: "v"}}, "metadata"),
    ({"model": "m", "metadata": {"k": "v" * 513}}, "metadata"),
    ({"model": "m", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"model": 5}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_ASSISTANTS)
def test_invalid_assistant_is_400_with_openai_envelope(server: Any, body: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{server.base_url}/assistants", json=body, headers=server.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"].startswith(param)


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/assistants", b"{not json"),
        ("POST", "/assistants", b"[1, 2]"),
        ("POST", "/threads", b"\xff\xfe"),
    ],
)
def test_malformed_bodies_are_400_not_500(server: Any, method: str, path: str, content: bytes) -> None:
    response = httpx.request(method, server.base_url + path, content=content,
                             headers={**server.headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_bad_list_parameters_are_400(server: Any) -> None:
    for query in ("limit=0", "limit=101", "order=sideways", "after=asst_unknown"):
        response = httpx.get(f"{server.base_url}/assistants?{query}", headers=server.headers)
        assert response.status_code == 400, query
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_path_and_method_use_the_envelope(server: Any) -> None:
    response = httpx.get(f"{server.base_url}/nothing-here", headers=server.headers)
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.put(f"{server.base_url}/assistants", headers=server.headers)
    assert response.status_code == 405 and "error" in response.json()


def test_empty_post_body_is_accepted_where_none_is_needed(server: Any) -> None:
    response = httpx.post(f"{server.base_url}/threads", headers={**server.headers, "Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["object"] == "thread"
