"""The code_interpreter tool inside runs: assistd runs the model's code in the thread's
sandboxed Python session and records it as a `code_interpreter` tool call.

The fake upstream asks for code (a `code_interpreter` function call), then answers once the
code's output is in the conversation. Every run here goes through the real sandbox.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, poll, wait_for_status, wait_until
from tests.support.spec import assert_matches_schema

pytestmark = pytest.mark.timeout(120)
CODE_TOOL = [{"type": "code_interpreter"}]


def code_call(code: str) -> Reply:
    return Reply.tool_calls([("code_interpreter", json.dumps({"code": code}))])


def script(upstream: FakeUpstream, question: str, code: str, answer: str = "Done.") -> None:
    """The model asks to run `code` for `question`, then answers `answer` after seeing the output
    (the request after the code's output matches no rule: it takes the queued answer)."""
    upstream.on(question, code_call(code))
    upstream.enqueue(Reply.text(answer))


def coder(client: openai.OpenAI, **kw: Any) -> Any:
    return assistant(client, tools=CODE_TOOL, **kw)


def run_code(client: openai.OpenAI, upstream: FakeUpstream, question: str, code: str, *,
             answer: str = "Done.", thread_id: str | None = None, **kw: Any) -> tuple[Any, Any]:
    """(run, its code_interpreter tool call) for a thread asked `question`."""
    script(upstream, question, code, answer)
    if thread_id is None:
        thread_id = client.beta.threads.create().id
    client.beta.threads.messages.create(thread_id, role="user", content=question)
    run = poll(client, thread_id, assistant_id=coder(client, **kw).id)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    calls = [c for s in steps if s.step_details.type == "tool_calls" for c in s.step_details.tool_calls]
    return run, calls[0] if calls else None


def logs(call: Any) -> str:
    return "".join(o.logs for o in call.code_interpreter.outputs if o.type == "logs")


def tool_result(upstream: FakeUpstream) -> str:
    """What the model was last told the code printed (the tool message of the latest request)."""
    return str(upstream.requests[-1].body["messages"][-1]["content"])


def test_code_runs_in_the_sandbox_and_its_output_goes_back_to_the_model(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    run, call = run_code(client, upstream, "what is six times seven", "print(6 * 7)", answer="It is 42.")
    assert run.status == "completed" and run.required_action is None
    assert call.type == "code_interpreter" and call.code_interpreter.input == "print(6 * 7)"
    assert logs(call).strip() == "42"
    assert tool_result(upstream).strip() == "42"
    offered = upstream.requests_matching("what is six times seven")[0].body["tools"]
    assert [t["function"]["name"] for t in offered] == ["code_interpreter"]
    message = client.beta.threads.messages.list(run.thread_id).data[0]
    assert message.content[0].text.value == "It is 42."  # type: ignore[union-attr]


def test_variables_persist_between_runs_of_a_thread_and_not_across_threads(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    thread = client.beta.threads.create()
    run_code(client, upstream, "remember a number", "secret = 41", thread_id=thread.id)
    _, call = run_code(client, upstream, "recall the number", "print(secret + 1)", thread_id=thread.id)
    assert logs(call).strip() == "42"
    run_code(client, upstream, "leave a file", "open('/mnt/data/mine.txt', 'w').write('private')",
             thread_id=thread.id)
    _, other = run_code(client, upstream, "look from elsewhere",
                        "import os\nprint(sorted(os.listdir('/mnt/data')))\nprint(secret)")
    assert "mine.txt" not in logs(other) and "NameError" in logs(other)


def test_an_uploaded_csv_is_read_from_mnt_data(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    csv = client.files.create(file=("prices.csv", b"item,price\napple,3\npear,4\n"), purpose="assistants")
    code = "import pandas as pd\nprint(pd.read_csv('/mnt/data/prices.csv')['price'].sum())"
    _, call = run_code(client, upstream, "total the prices", code,
                       tool_resources={"code_interpreter": {"file_ids": [csv.id]}})
    assert logs(call).strip() == "7"


def test_a_message_attachment_for_code_interpreter_appears_under_mnt_data(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    note = client.files.create(file=("note.txt", b"attached words"), purpose="assistants")
    thread = client.beta.threads.create(messages=[{
        "role": "user", "content": "see the note",
        "attachments": [{"file_id": note.id, "tools": [{"type": "code_interpreter"}]}]}])
    _, call = run_code(client, upstream, "read the attached note", "print(open('/mnt/data/note.txt').read())",
                       thread_id=thread.id)
    assert logs(call).strip() == "attached words"


def test_a_written_file_becomes_a_downloadable_file_cited_by_path(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    code = "open('/mnt/data/report.txt', 'w').write('quarterly numbers')"
    answer = "Here it is: [report](sandbox:/mnt/data/report.txt)."
    run, _ = run_code(client, upstream, "write a report", code, answer=answer)
    message = client.beta.threads.messages.list(run.thread_id).data[0]
    text = message.content[0].text  # type: ignore[union-attr]
    [annotation] = text.annotations
    assert annotation.type == "file_path" and annotation.text == "sandbox:/mnt/data/report.txt"
    assert text.value[annotation.start_index:annotation.end_index] == annotation.text
    file_id = annotation.file_path.file_id  # type: ignore[union-attr]
    assert client.files.retrieve(file_id).purpose == "assistants_output"
    assert client.files.content(file_id).read() == b"quarterly numbers"


def test_a_chart_becomes_an_image_output_and_an_image_file_part(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    run, call = run_code(client, upstream, "draw a chart", code, answer="A chart.")
    [image] = [o for o in call.code_interpreter.outputs if o.type == "image"]
    assert client.files.content(image.image.file_id).read()[:8] == b"\x89PNG\r\n\x1a\n"
    message = client.beta.threads.messages.list(run.thread_id).data[0]
    assert [p.type for p in message.content] == ["image_file", "text"]  # as OpenAI: the image first
    assert message.content[0].image_file.file_id == image.image.file_id  # type: ignore[union-attr]
    assert_matches_schema(message, "MessageObject")
    for step in client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data:
        assert_matches_schema(step, "RunStepObject")


def test_a_crashed_session_is_restarted_and_the_model_told(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    thread = client.beta.threads.create()
    crashed, crash = run_code(client, upstream, "set then crash",
                              "lost = 1\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)", thread_id=thread.id)
    assert crashed.status == "completed" and "session ended" in logs(crash).lower()
    run, call = run_code(client, upstream, "after the crash", "print('lost' in globals())", thread_id=thread.id)
    assert run.status == "completed" and logs(call).endswith("False\n")
    assert "a new python session was started" in tool_result(upstream).lower()


def test_an_exception_is_an_output_not_a_failed_run(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    run, call = run_code(client, upstream, "divide by zero", "1 / 0")
    assert run.status == "completed" and "ZeroDivisionError" in logs(call)


def test_the_code_streams_as_input_deltas_then_its_outputs(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    code = "for i in range(3):\n    print('line', i)"
    upstream.on("stream some code", Reply.tool_calls([("code_interpreter", json.dumps({"code": code}))],
                                                     chunk_delay=0.01))
    upstream.enqueue(Reply.text("Printed."))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream some code"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=coder(client).id) as stream:
        events = list(stream)
    deltas = [c.code_interpreter for e in events if e.event == "thread.run.step.delta"  # type: ignore[union-attr]
              for c in e.data.delta.step_details.tool_calls or []]  # type: ignore[union-attr]
    assert "".join(d.input or "" for d in deltas) == code  # type: ignore[union-attr]
    assert len([d for d in deltas if d.input]) > 1  # type: ignore[union-attr]  # it arrived in pieces
    outputs = [o for d in deltas for o in d.outputs or []]  # type: ignore[union-attr]
    assert [o.type for o in outputs] == ["logs"] and outputs[0].logs == "line 0\nline 1\nline 2\n"  # type: ignore[union-attr]
    assert events[-1].event == "thread.run.completed"


def test_cancel_while_code_runs_interrupts_it_and_the_session_lives_on(
        client: openai.OpenAI, upstream: FakeUpstream) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "loop forever"}])
    upstream.on("loop forever", code_call("kept = 'still here'\nwhile True:\n    pass"))
    run = client.beta.threads.runs.create(thread.id, assistant_id=coder(client).id)
    wait_until(lambda: client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data != [], 15, "the step")
    time.sleep(3)  # the session starts (about half a second) and the loop is running
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    ended = wait_for_status(client, thread.id, run.id, {"cancelled", "completed", "failed"})
    assert ended.status == "cancelled"
    [step] = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.status == "cancelled"
    _, call = run_code(client, upstream, "are you still there", "print(kept)", thread_id=thread.id)
    assert logs(call).strip() == "still here"


SECURITY = {
    "network": ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 5432), timeout=3)\n"
                "    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', type(e).__name__)"),
    "host files": ("import os\nfor p in ['/etc/shadow', '/work', '/root', '/var/lib/postgresql', '/tmp']:\n"
                   "    try:\n        seen = open(p).read() if os.path.isfile(p) else os.listdir(p)\n"
                   "        print('READ' if seen else 'BLOCKED', p, str(seen)[:80])\n"
                   "    except OSError:\n        print('BLOCKED', p)"),
    "fork bomb": ("import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time\n"
                  "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError:\n"
                  "    print('BLOCKED after', n)"),
    "memory bomb": ("try:\n    hog = bytearray(64 * 1024 ** 3)\n    print('ALLOCATED')\nexcept MemoryError:\n"
                    "    print('BLOCKED')"),
    "disk filler": ("chunk = b'x' * (1 << 20)\nn = 0\ntry:\n    with open('/mnt/data/fill', 'wb') as f:\n"
                    "        while True:\n            f.write(chunk)\n            f.flush()\n            n += 1\n"
                    "except OSError:\n    print('BLOCKED after', n, 'MiB')\nimport os\nos.remove('/mnt/data/fill')"),
}


@pytest.mark.parametrize("attack", list(SECURITY))
def test_the_sandbox_contains_the_attack_and_the_server_stays_healthy(
        client: openai.OpenAI, upstream: FakeUpstream, attack: str) -> None:
    run, call = run_code(client, upstream, f"try the {attack}", SECURITY[attack])
    assert run.status == "completed"
    output = logs(call)
    assert output and not any(word in output for word in ("CONNECTED", "READ", "ALLOCATED"))
    _, after = run_code(client, upstream, f"after the {attack}", "print('alive')")
    assert logs(after).strip() == "alive"


def test_code_past_the_wall_clock_limit_is_stopped_and_the_model_told(
        make_server: Any, upstream: FakeUpstream) -> None:
    srv = make_server(env={"ASSISTD_CODE_CALL_SECONDS": "2"})
    with srv.client() as client:
        thread = client.beta.threads.create()
        run, call = run_code(client, upstream, "spin forever", "while True:\n    pass", thread_id=thread.id)
        assert run.status == "completed"
        assert "time limit" in logs(call).lower() and "time limit" in tool_result(upstream).lower()
        _, after = run_code(client, upstream, "then print", "print('next')", thread_id=thread.id)
        assert logs(after).strip() == "next"
