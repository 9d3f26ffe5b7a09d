"""The Files API: uploads streamed to disk, lists, downloads, deletes, limits and odd names."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.server import AssistdServer
from tests.support.spec import assert_matches_schema

MB = 1024 * 1024


def files_dir(server: AssistdServer) -> Path:
    return server.data_dir / "files"


def stored(server: AssistdServer) -> set[str]:
    """Names in the server's files folder (partial uploads included)."""
    folder = files_dir(server)
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def partial_uploads(server: AssistdServer) -> set[str]:
    return {name for name in stored(server) if name.endswith(".part")}


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def post_form(server: AssistdServer, **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/files", headers=server.headers, timeout=60, **kw)


def assert_not_found(client: openai.OpenAI, file_id: str) -> None:
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(file_id)
        assert caught.value.body == {"message": f"No file found with id '{file_id}'.",
                                     "type": "invalid_request_error", "param": None, "code": None}


def test_upload_retrieve_list_download_and_delete_a_file(client: openai.OpenAI, server: AssistdServer,
                                                         tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(b"first line\nsecond line\n")
    before = int(time.time())
    with source.open("rb") as handle:
        created = client.files.create(file=handle, purpose="assistants")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose, created.status) == (23, "notes.txt", "assistants",
                                                                                 "processed")
    assert before <= created.created_at <= int(time.time())
    assert_matches_schema(created, "OpenAIFile")
    assert client.files.retrieve(created.id) == created
    assert created.id in [f.id for f in client.files.list(purpose="assistants")]
    assert client.files.content(created.id).read() == source.read_bytes()
    assert (files_dir(server) / created.id).read_bytes() == source.read_bytes()

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    assert_matches_schema(deleted, "DeleteFileResponse")
    assert_not_found(client, created.id)
    assert not (files_dir(server) / created.id).exists()


def test_upload_from_a_name_and_bytes_tuple(client: openai.OpenAI) -> None:
    created = client.files.create(file=("report.md", b"# Report\n"), purpose="user_data")
    assert (created.filename, created.bytes, created.purpose) == ("report.md", 9, "user_data")
    assert client.files.content(created.id).read() == b"# Report\n"


def test_binary_file_of_a_few_megabytes_round_trips_exactly(client: openai.OpenAI, server: AssistdServer) -> None:
    # Every byte value, CRLFs and boundary-like lines: nothing in the body may confuse the parser.
    payload = bytes(range(256)) * 64 + b"\r\n--boundary\r\n\r\n--" + os.urandom(4 * MB)
    created = client.files.create(file=("blob.bin", payload), purpose="assistants")
    assert created.bytes == len(payload)
    assert client.files.content(created.id).read() == payload
    assert (files_dir(server) / created.id).stat().st_size == len(payload)


def test_list_filters_by_purpose_and_paginates_with_limit_and_after(
        make_server: Callable[..., AssistdServer]) -> None:
    server = make_server()
    with server.client() as client:
        ids = [client.files.create(file=(f"a{i}.txt", b"a"), purpose="assistants").id for i in range(3)]
        other = [client.files.create(file=(f"u{i}.txt", b"u"), purpose="user_data").id for i in range(2)]

        everything = client.files.list()
        assert_matches_schema(everything.model_dump(mode="json", exclude_unset=True), "ListFilesResponse")
        assert [f.id for f in everything.data] == [*reversed(other), *reversed(ids)]  # newest first
        assert [f.id for f in client.files.list(purpose="user_data")] == list(reversed(other))

        first = client.files.list(purpose="assistants", limit=2)
        assert [f.id for f in first.data] == [ids[2], ids[1]] and first.has_more
        rest = client.files.list(purpose="assistants", limit=2, after=ids[1])
        assert [f.id for f in rest.data] == [ids[0]] and not rest.has_more
        oldest_first = client.files.list(purpose="assistants", order="asc", limit=1)
        assert [f.id for f in oldest_first] == ids  # the SDK's auto-pagination walks `after`


def test_unknown_file_ids_are_404_in_the_openai_envelope(client: openai.OpenAI) -> None:
    assert_not_found(client, "file-doesnotexist000000000000")


def test_filenames_with_paths_stay_metadata_and_nothing_is_written_elsewhere(
        client: openai.OpenAI, server: AssistdServer) -> None:
    root = server.data_dir.parent
    before = tree(root)
    names = ["../../etc/passwd", "a/b.txt", "../x", "/abs/olute.txt", "spaced name ünïcode.txt"]
    created = [client.files.create(file=(name, name.encode()), purpose="assistants") for name in names]
    assert [f.filename for f in created] == names
    assert [client.files.retrieve(f.id).filename for f in created] == names
    new = tree(root) - before
    assert new <= {files_dir(server), *(files_dir(server) / f.id for f in created)}
    for f in created:
        assert client.files.content(f.id).read() == f.filename.encode()


def test_upload_over_the_size_limit_is_refused_and_leaves_nothing_on_disk(
        make_server: Callable[..., AssistdServer]) -> None:
    server = make_server(env={"ASSISTD_MAX_UPLOAD_BYTES": "1000"})
    with server.client() as client:
        at_limit = client.files.create(file=("ok.bin", b"x" * 1000), purpose="assistants")
        assert at_limit.bytes == 1000
        for size in (1001, 5 * MB):
            with pytest.raises(openai.BadRequestError) as caught:
                client.files.create(file=("big.bin", b"x" * size), purpose="assistants")
            body: Any = caught.value.body
            assert body["type"] == "invalid_request_error" and body["param"] == "file"
            assert "too large" in body["message"] and "1000 bytes" in body["message"]
        assert stored(server) == {at_limit.id}
        assert [f.id for f in client.files.list()] == [at_limit.id]


def test_missing_or_bad_purpose_and_missing_file_are_400_with_param(client: openai.OpenAI,
                                                                    server: AssistdServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.txt", b"a"), purpose="nonsense")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "purpose"  # type: ignore[index]
    no_purpose = post_form(server, files={"file": ("a.txt", b"a")})
    assert no_purpose.status_code == 400
    assert no_purpose.json()["error"]["param"] == "purpose"
    assert no_purpose.json()["error"]["code"] == "missing_required_parameter"
    no_file = post_form(server, files={"purpose": (None, "assistants")})
    assert no_file.status_code == 400
    assert no_file.json()["error"] == {"message": "Missing required parameter: 'file'.", "type": "invalid_request_error",
                                       "param": "file", "code": "missing_required_parameter"}
    assert not partial_uploads(server)


@pytest.mark.parametrize("kw", [
    {"json": {"purpose": "assistants"}},
    {"content": b"purpose=assistants", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    {"content": b"not multipart at all", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}},
])
def test_a_body_that_is_not_multipart_is_400(server: AssistdServer, kw: dict[str, Any]) -> None:
    headers = {**server.headers, **kw.pop("headers", {})}
    response = httpx.post(f"{server.base_url}/files", headers=headers, **kw)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_client_that_disconnects_mid_upload_leaves_no_partial_file(server: AssistdServer) -> None:
    boundary = "b0undary"
    head = (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.api_key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {10 * MB}\r\n\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n")
    log_start = len(server.log_text())
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode() + b"x" * (2 * MB))
        wait_until(lambda: bool(partial_uploads(server)), "the upload to start")
    wait_until(lambda: not partial_uploads(server), "the partial file to be removed")
    assert "Traceback" not in server.log_text()[log_start:]


def test_expires_after_sets_expires_at_and_batch_files_expire_after_30_days(client: openai.OpenAI) -> None:
    soon = client.files.create(file=("a.txt", b"a"), purpose="assistants",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert soon.expires_at == soon.created_at + 3600
    assert_matches_schema(soon, "OpenAIFile")
    batch = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 24 * 3600
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("c.txt", b"c"), purpose="assistants",
                            expires_after={"anchor": "created_at", "seconds": 60})
    assert caught.value.body["param"] == "expires_after.seconds"  # type: ignore[index]


def test_a_200_mb_upload_streams_to_disk_without_growing_the_servers_memory(
        make_server: Callable[..., AssistdServer], tmp_path: Path) -> None:
    server = make_server()
    assert server.pid is not None
    source, digest = tmp_path / "big.bin", hashlib.sha256()
    block = os.urandom(MB)
    with source.open("wb") as out:
        for _ in range(200):
            out.write(block)
            digest.update(block)
    baseline = vm_hwm_kib(server.pid)
    try:
        with source.open("rb") as handle:
            response = post_form(server, files={"file": ("big.bin", handle)}, data={"purpose": "assistants"})
    finally:
        source.unlink()
    assert response.status_code == 200, response.text
    file_id = response.json()["id"]
    assert response.json()["bytes"] == 200 * MB
    downloaded = hashlib.sha256()
    with httpx.stream("GET", f"{server.base_url}/files/{file_id}/content", headers=server.headers) as body:
        for chunk in body.iter_bytes():
            downloaded.update(chunk)
    assert downloaded.hexdigest() == digest.hexdigest()
    grown_mb = (vm_hwm_kib(server.pid) - baseline) / 1024
    assert grown_mb < 64, f"the server's peak memory grew by {grown_mb:.0f} MB for a 200 MB file"
    assert httpx.delete(f"{server.base_url}/files/{file_id}", headers=server.headers).status_code == 200
    assert stored(server) == set()
