"""The baseline for get_run_rps: a bare Starlette endpoint answering a Run-sized JSON dict."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

RUN = {
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


async def run(request: Request) -> JSONResponse:
    return JSONResponse(RUN)


app = Starlette(routes=[Route("/v1/threads/{thread_id}/runs/{run_id}", run)])
