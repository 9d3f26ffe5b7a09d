"""The README's quickstart runs as written: its Python blocks, taken from README.md, run in a
fresh interpreter against a real `assistd serve` and the scripted upstream (only `base_url`
and `api_key` are pointed at the test server)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.test_stream_fidelity import _sandbox_problem
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.server import AssistdServer

README = Path(__file__).resolve().parents[1] / "README.md"
BASE_URL = "http://127.0.0.1:8000/v1"
API_KEY = "unused-unless-ASSISTD_API_KEYS"
CHART = ("import matplotlib.pyplot as plt\nxs = range(11)\nplt.plot(xs, [x * x for x in xs])\nplt.show()\n"
         "open('/mnt/data/squares.csv', 'w').write('x,y\\n' + ''.join(f'{x},{x * x}\\n' for x in xs))")
pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif((problem := _sandbox_problem()) is not None,
                                 reason=f"the quickstart's code_interpreter example needs the sandbox: {problem}")]


def quickstart() -> str:
    """The README's quickstart section."""
    text = README.read_text()
    section = text[text.index("## Quickstart with the openai SDK"):]
    return section[:section.index("\n## ", 1)]


def quickstart_code() -> str:
    """The Python blocks of the README's quickstart section, in order."""
    blocks = re.findall(r"```python\n(.*?)```", quickstart(), re.DOTALL)
    assert len(blocks) >= 3, "the quickstart lost its Python examples"
    return "\n".join(blocks)


def test_the_readme_quickstart_names_the_venv_command() -> None:
    section = quickstart()
    commands = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert commands and all(".venv/bin/assistd serve" in c for c in commands)
    assert "scripts/setup-code-sandbox" in section


@pytest.mark.parametrize("story", ["slow", "fast"])
def test_the_readme_quickstart_runs_as_written(
        server: AssistdServer, upstream: FakeUpstream, tmp_path: Path, story: str) -> None:
    code = quickstart_code()
    assert BASE_URL in code and API_KEY in code
    code = code.replace(BASE_URL, server.base_url).replace(API_KEY, server.api_key)
    upstream.on("Hello!", Reply.text("Hi there."))
    long_story = " ".join(f"word{i}" for i in range(400))
    upstream.on("long story", Reply.text(long_story, chunk_delay=0.05) if story == "slow" else Reply.text("The end."))
    upstream.on("Plot y = x squared", Reply.tool_calls([("code_interpreter", json.dumps({"code": CHART}))]))
    upstream.on("[file written: sandbox:/mnt/data/squares.csv",
                Reply.text(chunks=["Here is the chart; the points are in ", "sandbox:/mnt/data/squares.csv", "."]))

    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=150, check=False)

    assert done.returncode == 0, f"stderr:\n{done.stderr}\nstdout:\n{done.stdout}"
    out = done.stdout
    assert out.startswith("Hi there.\n")
    if story == "slow":
        assert "\ncancelled\n" in out
        upstream.wait_for_outcome("long story", "client_closed")
    else:
        assert "\ncancelled\n" in out or "Cannot cancel run with status 'completed'.\ncompleted\n" in out
    assert "[code_interpreter]" in out and "plt.show()" in out
    charts = list(tmp_path.glob("file-*.png"))
    assert len(charts) == 1 and charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"[chart saved as {charts[0].name}]" in out
    assert re.search(r"sandbox:/mnt/data/squares\.csv\. \[file: file-\w+\]", out), out
