"""The HTTP edge under hostile clients: slow heads and bodies, connection floods, disconnects,
other sites' pages (Host, Origin, Content-Type) and oversized bodies.

Every flood is a bounded number of sockets to 127.0.0.1, closed by the test; the server gets
short timeouts or a low cap so the test stays light.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.flows import wait_until
from tests.support.server import AssistdServer

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def connect(server: AssistdServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


@contextlib.contextmanager
def sockets(count: int, server: AssistdServer, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """`count` connections that each sent `first_bytes` and then nothing; closed on exit."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(server)
            sock.sendall(first_bytes)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection (it answers nothing more); waits up to 30 s."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def healthz(server: AssistdServer) -> int:
    with httpx.Client(timeout=10) as http:  # a new connection each time, like a health checker
        return http.get(f"{server.root_url}/healthz").status_code


def tracebacks(server: AssistdServer) -> int:
    return server.log_text().count("Traceback")


# ------------------------------------------------------------------ slow clients


def test_a_request_head_not_sent_within_the_header_timeout_is_closed(make_server: Callable[..., AssistdServer]) -> None:
    server = make_server(env={"ASSISTD_HTTP_HEADER_TIMEOUT": "1"})
    with sockets(1, server, HALF_HEAD) as (sock,):
        assert closed_by_server(sock)
    with sockets(1, server, b"") as (idle,):  # a connection that never sends a byte, too
        assert closed_by_server(idle)
    assert healthz(server) == 200
    assert tracebacks(server) == 0


def test_a_request_body_that_stops_coming_is_closed_without_a_traceback(
        make_server: Callable[..., AssistdServer]) -> None:
    server = make_server(env={"ASSISTD_HTTP_BODY_TIMEOUT": "1"})
    head = (b"POST /v1/threads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"metadata\": {")
    with sockets(3, server, head) as opened:
        assert all(closed_by_server(sock) for sock in opened)
    assert healthz(server) == 200
    assert tracebacks(server) == 0


def test_a_request_head_over_64_kib_is_refused(server: AssistdServer) -> None:
    with sockets(1, server, HALF_HEAD) as (sock,):
        with contextlib.suppress(OSError):  # the server may close while this is still sending
            sock.sendall(b"a" * 200_000)
        assert closed_by_server(sock)


def test_slow_heads_over_the_connection_cap_leave_healthz_served(make_server: Callable[..., AssistdServer]) -> None:
    # The server gets 400 open files (as if started under a low limit) and a cap of 100; 500
    # connections that each sent half a head would use up its files without the cap.
    server = make_server(env={"ASSISTD_HTTP_MAX_CONNECTIONS": "100", "ASSISTD_HTTP_HEADER_TIMEOUT": "300"})
    assert server.pid is not None
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (400, 400))
    with sockets(500, server, HALF_HEAD) as opened:
        assert [healthz(server) for _ in range(20)] == [200] * 20
        assert closed_by_server(opened[0])  # the oldest slow ones made room
    assert tracebacks(server) == 0


def test_the_open_file_soft_limit_is_raised_to_the_hard_limit_at_start(
        make_server: Callable[..., AssistdServer]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 512)
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip("the hard open-file limit is already as low as the test would set the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # inherited by the server process
    try:
        server = make_server()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert server.pid is not None
    server_soft, server_hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    assert server_soft == server_hard == hard


def test_clients_that_disconnect_mid_body_are_one_log_line_each_and_no_traceback(
        make_server: Callable[..., AssistdServer]) -> None:
    server = make_server()
    head = (b"POST /v1/threads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"metadata\": {")
    before = server.log_text()
    with sockets(50, server, head):
        time.sleep(0.5)  # most requests reach the app first (the rest are answered as gone: same line)
    assert healthz(server) == 200

    def new_log() -> str:
        return server.log_text()[len(before):]

    wait_until(lambda: "Traceback" in new_log() or new_log().count("POST /v1/threads 499") >= 50,
               timeout=30, what="an access line (499: the client went away) per disconnect")
    assert "Traceback" not in new_log()
    assert len(new_log().splitlines()) <= 50 + 2


# ------------------------------------------------------------------ other sites' pages


def test_without_keys_only_a_loopback_host_is_served(server: AssistdServer) -> None:
    url = f"{server.base_url}/assistants"
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}",
                 f"127.0.0.2:{server.port}"):
        assert httpx.get(url, headers={"Host": host}).status_code == 200, host
    for host in ("attacker.example", f"attacker.example:{server.port}", "127.0.0.1.nip.io", "0.0.0.0",
                 "localhost.attacker.example"):
        response = httpx.get(url, headers={"Host": host})
        assert response.status_code == 403, host
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server.root_url}/healthz", headers={"Host": "attacker.example"}).status_code == 403


def test_without_keys_a_page_from_another_origin_is_refused(server: AssistdServer) -> None:
    url = f"{server.base_url}/threads"
    json_type = {"Content-Type": "application/json"}
    refused = httpx.post(url, content=b"{}", headers={**json_type, "Origin": "https://attacker.example"})
    assert refused.status_code == 403
    same_origin = httpx.post(url, content=b"{}", headers={**json_type, "Origin": server.root_url})
    assert same_origin.status_code == 200


def test_a_key_server_serves_any_host(make_server: Callable[..., AssistdServer]) -> None:
    server = make_server(env={"ASSISTD_API_KEYS": "edge-key"})
    response = httpx.get(f"{server.base_url}/assistants", headers={**server.headers, "Host": "api.example.com"})
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_endpoint_refuses_other_content_types_with_415(server: AssistdServer, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with httpx.Client(headers=server.headers) as http:
        response = http.post(f"{server.base_url}/threads", content=b'{"metadata": {"a": "b"}}', headers=headers)
        assert response.status_code == 415
        assert response.json()["error"]["type"] == "invalid_request_error"
        ok = http.post(f"{server.base_url}/threads", content=b"{}",
                       headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 200


def test_a_key_server_also_refuses_other_content_types(make_server: Callable[..., AssistdServer]) -> None:
    server = make_server(env={"ASSISTD_API_KEYS": "edge-key"})
    response = httpx.post(f"{server.base_url}/threads", content=b"{}",
                          headers={**server.headers, "Content-Type": "text/plain"})
    assert response.status_code == 415


def test_requests_without_a_body_need_no_content_type(server: AssistdServer) -> None:
    with httpx.Client(headers=server.headers) as http:
        thread = http.post(f"{server.base_url}/threads", json={}).json()
        assert http.get(f"{server.base_url}/threads/{thread['id']}").status_code == 200
        # What the Node SDK sends for a cancel: a POST with no body and no Content-Type.
        cancel = http.post(f"{server.base_url}/threads/{thread['id']}/runs/run_missing/cancel")
        assert cancel.status_code == 404
        assert http.delete(f"{server.base_url}/threads/{thread['id']}").status_code == 200


# ------------------------------------------------------------------ body size


def test_a_json_body_over_the_limit_is_refused_with_413(make_server: Callable[..., AssistdServer]) -> None:
    server = make_server(env={"ASSISTD_MAX_BODY_BYTES": "100000"})
    # Far more than socket buffers hold: unless assistd reads the rest before answering, the
    # client, still sending, gets a connection reset instead of the 413.
    body = json.dumps({"metadata": {"a": "b"}, "messages": [{"role": "user", "content": "x" * 8_000_000}]})
    with httpx.Client(headers={**server.headers, "Content-Type": "application/json"}) as http:
        response = http.post(f"{server.base_url}/threads", content=body.encode())
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "invalid_request_error"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
            for i in range(0, len(body), 100_000):
                yield body[i:i + 100_000].encode()

        chunked = http.post(f"{server.base_url}/threads", content=chunks())
        assert chunked.status_code == 413
        assert chunked.json()["error"]["type"] == "invalid_request_error"
        assert http.post(f"{server.base_url}/threads", json={}).status_code == 200
    assert tracebacks(server) == 0


def test_multipart_uploads_keep_their_content_type(server: AssistdServer) -> None:
    response = httpx.post(f"{server.base_url}/files", headers=server.headers,
                          files={"file": ("a.txt", b"hello")}, data={"purpose": "assistants"})
    assert response.status_code == 200
