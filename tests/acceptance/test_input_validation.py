"""Malformed but parseable input is a 400 naming the parameter, and the connection stays usable.

Bodies go out as raw JSON text (the SDK can't send a lone surrogate), on one kept-alive
connection that may not be reopened, so an error that closed it fails the next request.
"""

from __future__ import annotations

import functools
import http.client
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.support.server import AssistdServer
from tests.support.spec import spec_path

SURROGATE = '"\\ud800"'  # JSON text for a lone high surrogate
NUL = '"a\\u0000b"'


class KeptAlive:
    """One HTTP/1.1 connection to the server, never silently reopened."""

    def __init__(self, server: AssistdServer) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.connect()
        self.conn.auto_open = 0  # a closed connection raises instead of being replaced

    def send(self, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
        headers = {**self.server.headers, "Content-Type": "application/json"}
        self.conn.request(method, "/v1" + path, body=None if body is None else body.encode(), headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def conn(server: AssistdServer) -> Iterator[KeptAlive]:
    kept = KeptAlive(server)
    yield kept
    kept.close()


def assert_refused(conn: KeptAlive, method: str, path: str, body: str, param: str) -> None:
    status, data = conn.send(method, path, body)
    assert status == 400, data
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["param"] == param, data
    status, _ = conn.send("GET", "/assistants?limit=1")  # the same connection still answers
    assert status == 200


def created(conn: KeptAlive, path: str, body: dict[str, Any]) -> str:
    status, data = conn.send("POST", path, json.dumps(body))
    assert status == 200, data
    return str(data["id"])


# ------------------------------------------------------------------ lone surrogates and NUL


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
def test_a_bad_character_in_any_string_is_a_400_naming_it(conn: KeptAlive, bad: str) -> None:
    thread = created(conn, "/threads", {})
    store = created(conn, "/vector_stores", {"name": "ok"})
    cases = [
        ("POST", f"/threads/{thread}/messages", f'{{"role": "user", "content": {bad}}}', "content"),
        ("POST", "/threads", f'{{"messages": [{{"role": "user", "content": {bad}}}]}}', "messages[0].content"),
        ("POST", "/assistants", f'{{"model": "m", "metadata": {{"k": {bad}}}}}', "metadata.k"),
        ("POST", "/assistants", f'{{"model": "m", "metadata": {{{bad}: "v"}}}}', None),
        ("POST", "/vector_stores", f'{{"name": {bad}}}', "name"),
        ("POST", f"/vector_stores/{store}", f'{{"name": {bad}}}', "name"),
        ("POST", f"/vector_stores/{store}/search", f'{{"query": {bad}}}', "query"),
        ("POST", f"/threads/{thread}", f'{{"metadata": {{"a": {bad}}}}}', "metadata.a"),
    ]
    for method, path, body, param in cases:
        if param is None:  # a bad key: named by itself, whatever it decodes to
            status, data = conn.send(method, path, body)
            assert status == 400 and data["error"]["param"].startswith("metadata."), data
            continue
        assert_refused(conn, method, path, body, param)


def test_a_nul_in_an_uploaded_filename_is_a_400(server: AssistdServer) -> None:
    # Written by hand: httpx would escape the NUL as %00.
    body = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n")
    response = httpx.post(f"{server.base_url}/files", content=body,
                          headers={**server.headers, "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


# ------------------------------------------------------------------ nesting and shapes


def test_json_nested_300_levels_is_a_400(conn: KeptAlive) -> None:
    deep = '{"a": ' * 300 + "1" + "}" * 300
    assert_refused(conn, "POST", "/assistants", f'{{"model": "m", "tool_resources": {deep}}}', "tool_resources")
    assert_refused(conn, "POST", "/threads", f'{{"metadata": {deep}}}', "metadata")


def test_json_nested_past_the_parsers_recursion_limit_is_a_400(conn: KeptAlive) -> None:
    status, data = conn.send("POST", "/threads", '{"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert status == 400, data
    assert conn.send("GET", "/assistants?limit=1")[0] == 200


@pytest.mark.parametrize("resources, param", [
    ('{"file_search": [1]}', "tool_resources.file_search"),
    ('"abc"', "tool_resources"),
    ('{"code_interpreter": [1]}', "tool_resources.code_interpreter"),
    ('{"code_interpreter": {"file_ids": "file-1"}}', "tool_resources.code_interpreter.file_ids"),
    ('{"file_search": {"vector_store_ids": [1]}}', "tool_resources.file_search.vector_store_ids[0]"),
    ('{"file_search": {"vector_stores": [{"file_ids": 5}]}}', "tool_resources.file_search.vector_stores[0].file_ids"),
])
def test_tool_resources_of_the_wrong_shape_are_a_400(conn: KeptAlive, resources: str, param: str) -> None:
    assistant = created(conn, "/assistants", {"model": "m"})
    thread = created(conn, "/threads", {})
    _, data = conn.send("POST", "/assistants", f'{{"model": "m", "tool_resources": {resources}}}')
    assert "Resources" not in data["error"]["message"]  # no class names of ours
    for method, path, body in [
        ("POST", "/assistants", f'{{"model": "m", "tool_resources": {resources}}}'),
        ("POST", f"/assistants/{assistant}", f'{{"tool_resources": {resources}}}'),
        ("POST", "/threads", f'{{"tool_resources": {resources}}}'),
        ("POST", f"/threads/{thread}", f'{{"tool_resources": {resources}}}'),
        ("POST", "/threads/runs", f'{{"assistant_id": "{assistant}", "tool_resources": {resources}}}'),
    ]:
        assert_refused(conn, method, path, body, param)


def test_tool_resources_of_the_right_shape_are_stored(client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(
        model="m", tool_resources={"code_interpreter": {"file_ids": []}, "file_search": {"vector_store_ids": []}})
    assert assistant.tool_resources is not None
    assert assistant.tool_resources.code_interpreter is not None
    assert assistant.tool_resources.code_interpreter.file_ids == []


# ------------------------------------------------------------------ sizes


def test_message_text_over_256000_characters_is_a_400(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    client.beta.threads.messages.create(thread.id, role="user", content="x" * 256_000)
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.messages.create(thread.id, role="user", content="x" * 256_001)
    assert caught.value.body["param"] == "content"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.threads.messages.create(
            thread.id, role="user", content=[{"type": "text", "text": "x" * 128_001}] * 2)
    assert caught.value.body["param"] == "content"  # type: ignore[index]
    messages = client.beta.threads.messages.list(thread.id)
    assert len(messages.data) == 1


# ------------------------------------------------------------------ a small fuzz from the spec

HOSTILE: list[Any] = [None, True, -1, 1e308, "", "x" * 300, [], [1], {}, {"a": [1]}, "\ud800", "a\x00b", [[[[]]]]]


def _encoded(value: Any) -> str:
    # json.dumps writes a lone surrogate as the \ud800 escape, as a hostile client would
    return json.dumps(value)


@functools.cache
def load_spec() -> dict[str, Any]:
    with spec_path().open("rb") as handle:
        return dict(yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def _request_properties(operation: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if not content:
        return []
    ref = content["schema"].get("$ref", "")
    schema = spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1], content["schema"])
    return sorted(schema.get("properties", {}))


def test_hostile_values_for_every_body_field_never_get_a_5xx(conn: KeptAlive) -> None:
    spec = load_spec()
    ids = {
        "assistant_id": created(conn, "/assistants", {"model": "m"}),
        "thread_id": created(conn, "/threads", {}),
        "vector_store_id": created(conn, "/vector_stores", {"name": "fuzz"}),
    }
    ids["message_id"] = created(conn, f"/threads/{ids['thread_id']}/messages", {"role": "user", "content": "hi"})
    tried = 0
    for path, operations in spec["paths"].items():
        if not path.startswith(("/assistants", "/threads", "/vector_stores")) or "post" not in operations:
            continue
        concrete = path
        for name, object_id in ids.items():
            concrete = concrete.replace("{" + name + "}", object_id)
        for prop in _request_properties(operations["post"], spec):
            for value in HOSTILE:
                status, data = conn.send("POST", concrete, json.dumps({prop: value}))
                assert status < 500, (path, prop, value, data)
                tried += 1
    assert tried > 300


# ------------------------------------------------------------------ an unexpected error


def test_the_connection_stays_usable_after_an_unexpected_error(make_server: Any) -> None:
    server = make_server()
    # A fault no input can cause: the database refuses every new thread.
    if server.env.get("ASSISTD_DATABASE_URL", "").startswith("postgres"):
        server.sql("ALTER TABLE threads ADD CONSTRAINT test_fault CHECK (false) NOT VALID")
    else:
        server.sql("CREATE TRIGGER test_fault BEFORE INSERT ON threads BEGIN SELECT RAISE(ABORT, 'test fault'); END")
    kept = KeptAlive(server)
    try:
        status, data = kept.send("POST", "/threads", "{}")
        assert status >= 500 and data["error"]["type"] == "server_error", data
        assert kept.send("GET", "/assistants?limit=1")[0] == 200
    finally:
        kept.close()
    assert server.log_text().count("Traceback") <= 1
