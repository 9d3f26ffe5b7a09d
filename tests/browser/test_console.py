"""The web console, in a real browser, against a real `assistd serve` and the scripted upstream.

Objects a test doesn't exercise through the pages are set up with the openai SDK; what the
console shows is checked in the page, what it did is checked through the SDK and the upstream.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from tests.browser.pages import Errors, shot_path
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.flows import assistant, wait_for_status
from tests.support.server import AssistdServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed").expect

pytestmark = pytest.mark.timeout(90)
EXACT = {"exact": True}


# Controls a screen reader (or a test) could not name: no label, no aria-label, no text.
UNNAMED_CONTROLS = """() => [...document.querySelectorAll("button, input, select, textarea, a[href]")]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim()
                  && !el.getAttribute("title"))
  .map((el) => el.outerHTML.slice(0, 80))"""


def tiny_png() -> bytes:
    """A 1x1 red PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


def open_console(page: Page, server: AssistdServer, section: str = "") -> None:
    page.goto(f"{server.root_url}/#/{section}")


def create_assistant_in_page(page: Page, server: AssistdServer, name: str, *, function: bool = False) -> str:
    open_console(page, server, "assistants")
    page.get_by_role("button", name="New assistant").click()
    page.get_by_label("Name", **EXACT).fill(name)
    page.get_by_label("Model", **EXACT).fill("fake-model")
    page.get_by_label("Instructions", **EXACT).fill(f"You are {name}.")
    if function:
        page.get_by_role("button", name="Add function").click()  # holds get_weather, as an example
    page.get_by_role("button", name="Save assistant").click()
    expect(page).to_have_url(re.compile(r"#/assistants/asst_"))
    return page.url.rsplit("/", 1)[1]


def chat(page: Page, server: AssistdServer, assistant_id: str, text: str, *, keyboard: bool = False) -> None:
    open_console(page, server, "playground")
    page.get_by_label("Assistant", **EXACT).select_option(assistant_id)
    page.get_by_label("Message", **EXACT).fill(text)
    if keyboard:
        page.get_by_label("Message", **EXACT).press("Enter")
    else:
        page.get_by_role("button", name="Send").click()


def run_status(page: Page) -> Any:
    return page.locator(".runline .status").last


def test_create_an_assistant_then_a_streamed_chat_rendered_as_markdown(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant_id = create_assistant_in_page(page, console, "Poet")
    made = client.beta.assistants.retrieve(assistant_id)
    assert (made.name, made.model, made.instructions) == ("Poet", "fake-model", "You are Poet.")
    hostile = "<img src=x onerror=alert(1)> [bad](javascript:alert(1)) [good](https://example.com/)"
    answer = f"## Title\n\nSome **bold** and `code`.\n\n```python\nprint('hi')\n```\n\n- one\n- two\n\n{hostile}"
    upstream.on("write me a poem", Reply.text(answer, chunk_delay=0.02))
    chat(page, console, assistant_id, "write me a poem")
    expect(run_status(page)).to_have_text("completed")
    reply = page.locator("article.msg.assistant").last
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("pre code")).to_have_text("print('hi')")
    expect(reply.locator("li")).to_have_text(["one", "two"])
    expect(reply).to_contain_text("<img src=x onerror=alert(1)>")  # shown as text, not markup
    assert reply.locator("img").count() == 0
    assert reply.locator("a").evaluate_all("links => links.map(a => a.href)") == ["https://example.com/"]
    sent = upstream.requests_matching("write me a poem")[0].body["messages"]
    assert sent[0]["content"].startswith("You are Poet.")


def test_cancel_mid_stream_shows_cancelled_and_closes_the_upstream(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("go on forever", Reply.hang(after_chunks=2))
    chat(page, console, assistant(client).id, "go on forever", keyboard=True)
    reply = page.locator("article.msg.assistant").last
    expect(reply).to_contain_text("part1")  # streamed text arrived while the model still generates
    expect(run_status(page)).to_have_text("in_progress")
    page.get_by_role("button", name="Cancel run").focus()
    page.keyboard.press("Enter")  # the keyboard alone is enough
    expect(run_status(page)).to_have_text("cancelled")
    upstream.wait_for_outcome("go on forever", "client_closed")
    expect(page.get_by_role("button", name="Cancel run")).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()


def test_a_function_call_answered_by_hand_completes_the_run(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant_id = create_assistant_in_page(page, console, "Forecaster", function=True)
    [tool] = client.beta.assistants.retrieve(assistant_id).tools
    assert tool.type == "function" and tool.function.name == "get_weather"
    upstream.on("weather in Paris", Reply.tool_calls([("get_weather", '{"city": "Paris"}')]))
    upstream.enqueue(Reply.text("It is sunny in Paris."))
    chat(page, console, assistant_id, "weather in Paris")
    expect(run_status(page)).to_have_text("requires_action")
    expect(page.locator("details[data-type=function]").last).to_contain_text('"city": "Paris"')
    page.get_by_label("Output for get_weather", **EXACT).fill("sunny, 24 C")
    page.get_by_role("button", name="Submit outputs").click()
    expect(run_status(page)).to_have_text("completed")
    expect(page.locator("article.msg.assistant").last).to_contain_text("It is sunny in Paris.")
    assert upstream.requests[-1].body["messages"][-1] == {
        "role": "tool", "tool_call_id": upstream.requests[-1].body["messages"][-2]["tool_calls"][0]["id"],
        "content": "sunny, 24 C"}


def test_a_function_with_a_broken_schema_is_refused_before_saving(
        page: Page, console: AssistdServer, client: openai.OpenAI) -> None:
    open_console(page, console, "assistants")
    page.get_by_role("button", name="New assistant").click()
    page.get_by_label("Name", **EXACT).fill("Broken tools")
    page.get_by_label("Model", **EXACT).fill("fake-model")
    page.get_by_role("button", name="Add function").click()
    page.get_by_label("Function (JSON)").fill('{"name": "bad name!", "parameters": {}}')
    page.get_by_role("button", name="Save assistant").click()
    expect(page.get_by_text("name: 1 to 64 letters")).to_be_visible()
    page.get_by_label("Function (JSON)").fill('{"name": "ok", "parameters": [')
    page.get_by_role("button", name="Save assistant").click()
    expect(page.get_by_text("Not valid JSON")).to_be_visible()
    assert "Broken tools" not in [a.name for a in client.beta.assistants.list(limit=100)]


def test_a_code_chart_is_shown_as_an_image(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    from assistd.execution.code_interpreter import sandbox_problem

    if (problem := sandbox_problem()) is not None:
        pytest.skip(f"code_interpreter isn't offered here: {problem}")
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    upstream.on("draw a chart", Reply.tool_calls([("code_interpreter", json.dumps({"code": code}))]))
    upstream.enqueue(Reply.text("Here is the chart."))
    chat(page, console, assistant(client, tools=[{"type": "code_interpreter"}]).id, "draw a chart")
    expect(run_status(page)).to_have_text("completed", timeout=60_000)
    call = page.locator("details[data-type=code_interpreter]").last
    expect(call).to_contain_text("plt.plot([1, 3, 2])")
    for img in (call.get_by_role("img", name="Chart from code interpreter"),
                page.locator("article.msg.assistant img").last):
        expect(img).to_have_attribute("src", re.compile(r"^blob:"))
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())


def test_a_file_uploaded_added_to_a_vector_store_and_searched(
        page: Page, console: AssistdServer, client: openai.OpenAI) -> None:
    open_console(page, console, "files")
    text = "The lighthouse keeper logs the tide at dawn.\n" * 40 + "Quokkas live on Rottnest Island.\n"
    page.get_by_label("File", **EXACT).set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": text.encode()})
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("Uploaded notes.txt as file-")
    expect(page.get_by_label("Upload progress")).to_have_js_property("value", 1)
    file_id = re.search(r"file-\w+", page.get_by_role("status").inner_text()).group(0)  # type: ignore[union-attr]
    expect(page.locator(f"tr[data-file='{file_id}']")).to_contain_text("notes.txt")

    page.get_by_role("link", name="Vector stores").click()
    page.get_by_label("Name", **EXACT).fill("Island notes")
    page.get_by_role("button", name="Create vector store").click()
    page.get_by_label("Existing file").select_option(file_id)
    page.get_by_role("button", name="Add file").click()
    expect(page.locator(f"tr[data-file='{file_id}'] .status")).to_have_text("completed")
    page.get_by_label("Search query").fill("quokkas island")
    page.get_by_role("button", name="Search", exact=True).click()
    result = page.locator(".result").first
    expect(result).to_contain_text("notes.txt")
    expect(result).to_contain_text("Quokkas live on Rottnest Island.")
    expect(result.locator(".score")).to_have_text(re.compile(r"score \d\.\d{3}"))


def test_a_failed_runs_last_error_is_shown_in_the_thread_view(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("this will fail", Reply.error(400, "the prompt was refused upstream"))
    helper = assistant(client)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "this will fail"}])
    run = client.beta.threads.runs.create(thread.id, assistant_id=helper.id)
    failed = wait_for_status(client, thread.id, run.id, {"failed"})
    assert failed.last_error is not None
    open_console(page, console, "threads")
    page.get_by_label("Assistant", **EXACT).select_option(helper.id)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    page.get_by_role("link", name=thread.id).click()
    card = page.locator(f"article.run[data-run='{run.id}']")
    expect(card.locator(".status").first).to_have_text("failed")
    expect(card).to_contain_text(f"{failed.last_error.code}: {failed.last_error.message}")
    expect(card).to_contain_text("fake-model")
    expect(page.locator("article.msg.user")).to_contain_text("this will fail")


def test_a_run_still_going_is_followed_live_in_the_thread_view(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("keep talking", Reply.hang(after_chunks=1))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "keep talking"}])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant(client).id)
    upstream.wait_for_requests(1)
    wait_for_status(client, thread.id, run.id, {"in_progress"})
    open_console(page, console, f"threads/{thread.id}")
    card = page.locator(f"article.run[data-run='{run.id}']")
    expect(card.locator(".status").first).to_have_text("in_progress")
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    expect(card.locator(".status").first).to_have_text("cancelled")  # no reload: from the event stream
    expect(page.locator("article.msg.assistant")).to_contain_text("part0")


def test_a_long_thread_shows_its_newest_messages_and_pages_back(
        page: Page, console: AssistdServer, client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    for i in range(45):
        client.beta.threads.messages.create(thread.id, role="user", content=f"message number {i}")
    open_console(page, console, f"threads/{thread.id}")
    messages = page.locator("article.msg")
    expect(messages).to_have_count(20)
    expect(messages.last).to_contain_text("message number 44")
    page.get_by_role("button", name="Load older messages").click()
    expect(messages).to_have_count(40)
    page.get_by_role("button", name="Load older messages").click()
    expect(messages).to_have_count(45)
    expect(messages.first).to_contain_text("message number 0")
    expect(page.get_by_role("button", name="Load older messages")).to_have_count(0)


def test_api_errors_are_shown_with_their_message(page: Page, console: AssistdServer, errors: Errors) -> None:
    errors.allow_failed_request(r"/v1/assistants/asst_doesnotexist$")
    open_console(page, console, "assistants/asst_doesnotexist")
    expect(page.get_by_role("alert").first).to_contain_text("No assistant found with id 'asst_doesnotexist'")


def test_a_server_with_keys_asks_for_one_and_keeps_it_in_session_storage(
        page: Page, make_server: Any, errors: Errors) -> None:
    errors.allow_failed_request(r"/v1/assistants\?limit=1$")  # the wrong key's 401, shown in the page
    keyed = make_server(env={"ASSISTD_API_KEYS": "sk-right"})
    page.goto(keyed.root_url + "/")
    page.get_by_label("API key", **EXACT).fill("sk-wrong")
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_text("Incorrect API key provided")).to_be_visible()
    page.get_by_label("API key", **EXACT).fill("sk-right")
    page.get_by_role("button", name="Use key").click()
    expect(page.get_by_role("button", name="New assistant")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('assistd.apiKey')") == "sk-right"
    assert page.evaluate("localStorage.length") == 0


def test_the_console_is_served_with_a_content_security_policy(console: AssistdServer) -> None:
    for path, kind in (("/", "text/html"), ("/ui/js/app.js", "text/javascript"), ("/ui/console.css", "text/css")):
        response = httpx.get(console.root_url + path, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "img-src 'self' blob: data:" in policy
        assert "unsafe-inline" not in policy
    assert httpx.get(console.root_url + "/ui/../pyproject.toml", timeout=10).status_code == 404


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_renders_without_errors(
        browser: Any, console: AssistdServer, client: openai.OpenAI, scheme: str, request: pytest.FixtureRequest) -> None:
    errors = Errors()
    context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 860})
    try:
        tab = context.new_page()
        tab.on("console", errors.console)
        tab.on("pageerror", errors.page_error)
        helper = assistant(client, name="Showcase", tools=[{"type": "file_search"}])
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hello *there*"}])
        client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=helper.id, poll_interval_ms=20)
        store = client.vector_stores.create(name="Showcase store")
        for section in ("assistants", f"assistants/{helper.id}", "playground", "threads",
                        f"threads/{thread.id}", "files", "vector_stores", f"vector_stores/{store.id}"):
            tab.goto(f"{console.root_url}/#/{section}")
            expect(tab.locator("main h1")).to_be_visible()
            tab.wait_for_load_state("networkidle")
            assert tab.evaluate(UNNAMED_CONTROLS) == [], section
            tab.screenshot(path=shot_path(request, "-" + section.split("/")[0] + ("-one" if "/" in section else "")),
                           full_page=True)
        background = tab.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(19, 20, 23)") == (scheme == "dark")
    finally:
        context.close()
    assert not errors.seen, "\n".join(errors.seen)


def test_an_attached_file_is_searched_and_the_answer_cites_it(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("where do quokkas live", Reply.tool_calls([("file_search", '{"query": "quokka island"}')]))
    upstream.on("Passages from the files", Reply.text("On Rottnest Island 【0†quokka.txt】."))
    searcher = assistant(client, tools=[{"type": "file_search"}])
    open_console(page, console, "playground")
    page.get_by_label("Assistant", **EXACT).select_option(searcher.id)
    page.get_by_label("Message", **EXACT).fill("where do quokkas live")
    page.get_by_label("Attach file").set_input_files(
        {"name": "quokka.txt", "mimeType": "text/plain", "buffer": b"The quokka lives on Rottnest Island.\n"})
    page.get_by_label("Attach for").select_option("file_search")
    page.get_by_role("button", name="Send").click()
    expect(run_status(page)).to_have_text("completed", timeout=30_000)
    expect(page.locator("article.msg.user").last).to_contain_text("for file_search")
    search = page.locator("details[data-type=file_search]").last
    expect(search).to_contain_text("quokka.txt")
    expect(search.locator(".score")).to_have_text(re.compile(r"score \d\.\d{3}"))
    expect(search).to_contain_text("The quokka lives on Rottnest Island.")
    cite = page.locator("article.msg.assistant a.cite").last
    expect(cite).to_have_text("[1: quokka.txt]")
    with page.expect_download() as download:
        cite.click()
    assert download.value.suggested_filename == "quokka.txt"


def test_markdown_from_the_model_never_becomes_markup(page: Page, console: AssistdServer) -> None:
    open_console(page, console, "files")
    rendered = page.evaluate("""async () => {
        const { render } = await import("/ui/js/md.js");
        const cases = [
          "<script>window.pwned = 1</script>",
          "<img src=x onerror='window.pwned = 1'>",
          "[a](javascript:window.pwned=1) [b](data:text/html,hi) [c](JAVASCRIPT:x) [d](mailto:a@b.c)",
          "**<b>bold</b>** and `<i>code</i>`",
          "```html\\n<iframe src=x></iframe>\\n```",
          "```\\nunclosed fence <svg onload=x>",
          "1. first\\n2. *second*\\n\\n# Heading <u>x</u>",
        ];
        return cases.map((text) => {
          const el = render(text);
          return { html: el.innerHTML, text: el.textContent,
                   tags: [...el.querySelectorAll("*")].map((n) => n.tagName.toLowerCase()),
                   hrefs: [...el.querySelectorAll("a")].map((a) => a.getAttribute("href")) };
        });
    }""")
    allowed = {"p", "br", "strong", "em", "code", "pre", "a", "ul", "ol", "li", "h3", "span"}
    for case in rendered:
        assert set(case["tags"]) <= allowed, case
        assert all(href.startswith(("https:", "http:", "mailto:")) for href in case["hrefs"]), case
    assert rendered[0]["text"] == "<script>window.pwned = 1</script>"
    assert rendered[2]["hrefs"] == ["mailto:a@b.c"]
    assert "<b>bold</b>" in rendered[3]["text"] and rendered[3]["tags"] == ["p", "strong", "code"]
    assert rendered[4]["tags"] == ["pre", "code"] and "<iframe src=x></iframe>" in rendered[4]["text"]
    assert rendered[6]["tags"] == ["ol", "li", "li", "em", "h3"]
    assert page.evaluate("window.pwned") is None


def test_streamed_image_parts_and_file_annotations_render_in_delta_and_completed_form(
        page: Page, console: AssistdServer, client: openai.OpenAI) -> None:
    png = client.files.create(file=("dot.png", tiny_png()), purpose="assistants").id
    report = client.files.create(file=("report.txt", b"numbers"), purpose="assistants").id
    open_console(page, console, "files")
    # The probe goes after <main>, not in it: the files view fills <main> when its list
    # arrives, which on a busy machine can be after the probe was added (it was wiped).
    page.evaluate("""async ([png, report]) => {
        const { Conversation } = await import("/ui/js/conversation.js");
        const conv = new Conversation();
        conv.el.id = "probe";
        document.body.append(conv.el);
        const text = "Saved to sandbox:/mnt/data/report.txt here.";
        const start = text.indexOf("sandbox:"), end = start + "sandbox:/mnt/data/report.txt".length;
        const note = { index: 0, type: "file_path", text: "sandbox:/mnt/data/report.txt", start_index: start,
                       end_index: end, file_path: { file_id: report } };
        conv.handle("thread.message.created", { id: "msg_1", role: "assistant", content: [], status: "in_progress" });
        conv.handle("thread.message.delta", { id: "msg_1", delta: { content: [{ index: 0, type: "text", text: { value: text.slice(0, 10) } }] } });
        conv.handle("thread.message.delta", { id: "msg_1", delta: { content: [{ index: 0, type: "text", text: { value: text.slice(10), annotations: [note] } }] } });
        conv.handle("thread.message.delta", { id: "msg_1", delta: { content: [{ index: 1, type: "image_file", image_file: { file_id: png } }] } });
        window.probe = { conv, final: { id: "msg_1", role: "assistant", status: "completed",
          content: [{ type: "text", text: { value: text, annotations: [note] } }, { type: "image_file", image_file: { file_id: png } }] } };
    }""", [png, report])
    message = page.locator("#probe article.msg")
    for _ in ("delta", "completed"):
        expect(message.locator("a.cite")).to_have_text("report.txt")
        expect(message).to_contain_text("Saved to report.txt here.")
        expect(message.locator("img")).to_have_attribute("src", re.compile(r"^blob:"))
        page.wait_for_function("() => document.querySelector('#probe img')?.naturalWidth === 1")
        page.evaluate("window.probe.conv.handle('thread.message.completed', window.probe.final)")
    expect(message.locator("img")).to_have_count(1)
    with page.expect_download() as download:
        message.locator("a.cite").click()
    assert download.value.suggested_filename == "report.txt"


def test_an_assistant_edited_then_deleted(page: Page, console: AssistdServer, client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="Editor's store")
    assistant_id = create_assistant_in_page(page, console, "Draft")
    page.get_by_label("Name", **EXACT).fill("Final")
    page.get_by_label("Temperature", **EXACT).fill("0.3")
    page.get_by_label("Response format", **EXACT).select_option("json_object")
    page.get_by_label("File search", **EXACT).check()
    page.get_by_label("File search vector store IDs", **EXACT).fill(store.id)
    page.get_by_label("Metadata (JSON)", **EXACT).fill('{"team": "docs"}')
    page.get_by_role("button", name="Save assistant").click()
    expect(page.get_by_role("heading", name="Final")).to_be_visible()
    saved = client.beta.assistants.retrieve(assistant_id)
    assert (saved.name, saved.temperature, saved.metadata) == ("Final", 0.3, {"team": "docs"})
    assert saved.response_format.type == "json_object"  # type: ignore[union-attr]
    assert [t.type for t in saved.tools] == ["file_search"]
    assert saved.tool_resources.file_search.vector_store_ids == [store.id]  # type: ignore[union-attr]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete assistant").click()
    expect(page).to_have_url(re.compile(r"#/assistants$"))
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.retrieve(assistant_id)


def test_a_thread_reopened_in_the_playground_follows_its_running_run_and_can_cancel_it(
        page: Page, console: AssistdServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.on("still writing", Reply.hang(after_chunks=2))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "still writing"}])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant(client).id)
    wait_for_status(client, thread.id, run.id, {"in_progress"})
    upstream.wait_for_requests(1)
    open_console(page, console, f"playground/{thread.id}")
    expect(run_status(page)).to_have_text("in_progress")
    page.get_by_role("button", name="Cancel run").click()
    expect(run_status(page)).to_have_text("cancelled")
    upstream.wait_for_outcome("still writing", "client_closed")
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled"
