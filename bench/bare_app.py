"""The baseline for get_run_rps: a bare Starlette endpoint answering a fixed Run JSON dict,
served by uvicorn with the options `assistd serve` uses (one process, uvloop/httptools
from `uvicorn[standard]`, no access log).

`python -m bench.bare_app --port N [--json FILE]`: FILE holds the dict to answer (the
benchmark writes the run assistd returned, so both bodies have the same size).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

RUN: dict[str, Any] = {
    "id": "run_abcdefghijklmnopqrstuvwx", "object": "thread.run", "created_at": 1795348708,
    "thread_id": "thread_abcdefghijklmnopqrstuvwx", "assistant_id": "asst_abcdefghijklmnopqrstuvwx",
    "status": "completed", "started_at": 1795348708, "expires_at": None, "cancelled_at": None,
    "failed_at": None, "completed_at": 1795348709, "required_action": None, "last_error": None,
    "incomplete_details": None, "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    "model": "bench", "instructions": "", "tools": [], "tool_choice": "auto", "parallel_tool_calls": True,
    "temperature": 1.0, "top_p": 1.0, "response_format": "auto", "max_prompt_tokens": None,
    "max_completion_tokens": None, "truncation_strategy": {"type": "auto", "last_messages": None},
    "metadata": {},
}


def create_app(body: dict[str, Any]) -> Starlette:
    async def retrieve(request: Request) -> JSONResponse:
        return JSONResponse(body)

    return Starlette(routes=[Route("/v1/threads/{thread_id}/runs/{run_id}", retrieve, methods=["GET"])])


app = create_app(RUN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json", type=Path, help="the dict to answer (default: a built-in Run)")
    args = parser.parse_args()
    body = json.loads(args.json.read_text()) if args.json else RUN
    # The same uvicorn.run options as `assistd serve` (assistd/cli.py).
    uvicorn.run(create_app(body), host="127.0.0.1", port=args.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=3, timeout_keep_alive=65)


if __name__ == "__main__":
    main()
