"""One turn of a run: build the prompt, stream one upstream completion, record what the
model said (a message, or tool calls), and move the run to its next status.

A run that needs tool outputs ends its turn at `requires_action`; submitting the outputs
queues the run again and a later turn continues from what the database holds. Calls of the
`file_search` and `code_interpreter` tools are answered by assistd itself, and the turn
goes on with another upstream call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from assistd.domain import objects as o
from assistd.domain.ids import new_id, now
from assistd.domain.run_state import RunStatus
from assistd.execution import code_tool, file_search, prompt
from assistd.execution.runtime import Runtime
from assistd.execution.settle import Settled, run_usage, settle_in
from assistd.execution.sweeper import hand_back
from assistd.execution.upstream import UpstreamError
from assistd.storage.files import FileStore

log = logging.getLogger("assistd.executor")
Obj = dict[str, Any]


class StopReason:
    CANCEL = "cancel"  # the run is `cancelling`: finish the cancellation
    SHUTDOWN = "shutdown"  # this process is stopping: hand the run back, or fail it
    LOST = "lost"  # the run is no longer ours (lease lapsed): write nothing more


class RunTurn:
    def __init__(self, rt: Runtime, run: Obj) -> None:
        self.rt = rt
        self.run = run
        self.stop_reason = StopReason.CANCEL
        self.store_ids: list[str] = []  # the vector stores file_search looks in
        self.steps: list[Obj] = []  # the run's steps before this upstream call
        self.searching = False  # the model is offered file_search in this call
        self.coding = False  # the model is offered code_interpreter in this call
        self._reset()

    def _reset(self) -> None:
        """Forget the last upstream call: the next one starts afresh from the database."""
        self.message: Obj | None = None
        self.message_step: Obj | None = None
        self.tool_step: Obj | None = None
        self.calls: dict[int, Obj] = {}
        self.code_inputs: dict[int, code_tool.InputStream] = {}
        self.text: list[str] = []
        self.usage: Obj | None = None
        self.finish_reason: str | None = None
        self.prompt_estimate = 0

    @property
    def run_id(self) -> str:
        return str(self.run["id"])

    def publish(self, event: str, data: Any) -> None:
        self.rt.broker.publish(self.run_id, event, data)

    async def execute(self) -> None:
        """Run the turn to its end; every way out leaves the run in a truthful status."""
        try:
            await self._turn()
        except asyncio.CancelledError:
            await self._record_end(asyncio.shield(self._after_stop()))
        except (UpstreamError, file_search.ExpiredStore) as exc:
            await self._record_end(self._end(RunStatus.FAILED, last_error={"code": exc.code, "message": exc.message}))
        except Exception as exc:  # a bug must not strand the run in_progress
            log.exception("run %s failed inside assistd", self.run_id)
            error = {"code": "server_error", "message": f"assistd error: {type(exc).__name__}"}
            await self._record_end(self._end(RunStatus.FAILED, last_error=error))

    async def _record_end(self, ending: Awaitable[None]) -> None:
        """Write how the turn ended; if the database refuses (it is down, or out of
        connections), the run's lease lapses and a sweeper settles it."""
        try:
            await ending
        except Exception:
            log.exception("run %s: could not record how its turn ended; its lease will lapse", self.run_id)

    # ------------------------------------------------------------ the turn

    async def _turn(self) -> None:
        if file_search.tool(self.run) is not None:
            self.store_ids = await file_search.vector_store_ids(self.rt.store, self.run)
            await file_search.check_live(self.rt.store, self.store_ids)
            await file_search.wait_for_ingestion(self.rt.store, self.store_ids)
        while await self._call():
            self._reset()

    async def _call(self) -> bool:
        """One upstream call; True when the turn goes on with another (file_search was answered)."""
        store = self.rt.store
        self.steps = steps = await store.run_steps(self.run_id)
        history = await store.thread_messages(self.run["thread_id"])
        used = run_usage(steps)
        self.searching = bool(self.store_ids) and file_search.rounds(steps) < file_search.MAX_ROUNDS
        self.coding = (self.rt.code_pool is not None and code_tool.tool(self.run) is not None
                       and code_tool.rounds(steps) < code_tool.MAX_ROUNDS)
        request = self._request(history, steps, used)
        if isinstance(request, str):
            await self._end_incomplete(request)
            return False
        async with self.rt.upstream.stream(request) as chunks:
            async for chunk in chunks:
                await self._on_chunk(chunk)
        if self.finish_reason is None:  # the connection ended without the completion's end
            raise UpstreamError("server_error", "The upstream stream ended before the completion finished.")
        return await self._finish(used)

    def _budgets(self, used: Obj) -> tuple[int | None, int | None]:
        max_prompt = self.run.get("max_prompt_tokens")
        max_completion = self.run.get("max_completion_tokens")
        prompt_left = None if max_prompt is None else max_prompt - used["prompt_tokens"]
        completion_left = None if max_completion is None else max_completion - used["completion_tokens"]
        return prompt_left, completion_left

    def _request(self, history: list[Obj], steps: list[Obj], used: Obj) -> Obj | str:
        """The upstream request, or the budget (`incomplete_details.reason`) that forbids it."""
        prompt_left, completion_left = self._budgets(used)
        if completion_left is not None and completion_left <= 0:
            return "max_completion_tokens"
        run_messages = [m for m in history if m["run_id"] == self.run_id]
        thread, own = prompt.conversation(self.run, history, steps, run_messages)
        try:
            messages = prompt.truncate(self.run, prompt.system_messages(self.run), thread, own, prompt_left)
        except prompt.PromptTooLong:
            return "max_prompt_tokens"
        self.prompt_estimate = prompt.estimate_tokens(messages)
        served = [*([file_search.FUNCTION] if self.searching else []), *([code_tool.FUNCTION] if self.coding else [])]
        return prompt.build_request(self._request_run(steps), messages, completion_left,
                                    self.rt.upstream.max_tokens_param, served)

    def _request_run(self, steps: list[Obj]) -> Obj:
        """The run as the next request sees it: a `tool_choice` forcing file_search or
        code_interpreter forces only the first call of it."""
        choice = self.run.get("tool_choice")
        called = {file_search.NAME: file_search.rounds(steps), code_tool.NAME: code_tool.rounds(steps)}
        if isinstance(choice, dict) and called.get(choice.get("type") or ""):
            return {**self.run, "tool_choice": "auto"}
        return self.run

    async def _on_chunk(self, chunk: ChatCompletionChunk) -> None:
        if chunk.usage is not None:
            self.usage = {
                "prompt_tokens": chunk.usage.prompt_tokens,
                "completion_tokens": chunk.usage.completion_tokens,
                "total_tokens": chunk.usage.total_tokens,
            }
        for choice in chunk.choices:
            if choice.delta.content:
                await self._on_text(choice.delta.content)
            if choice.delta.tool_calls:
                await self._on_tool_calls(choice.delta.tool_calls)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    # ------------------------------------------------------------ text

    async def _open_message(self) -> None:
        run = self.run
        message = o.new_message(
            run["thread_id"], "assistant", [], status="in_progress",
            assistant_id=run["assistant_id"], run_id=self.run_id,
        )
        step = o.new_step(run, "message_creation", {
            "type": "message_creation", "message_creation": {"message_id": message["id"]},
        })
        async with self.rt.store.db.transaction() as tx:
            await self.rt.store.save_step(step, tx)
            await self.rt.store.insert_message(message, tx)
        self.message, self.message_step = message, step
        self.publish("thread.run.step.created", step)
        self.publish("thread.run.step.in_progress", step)
        self.publish("thread.message.created", message)
        self.publish("thread.message.in_progress", message)

    async def _on_text(self, piece: str) -> None:
        if self.message is None:
            await self._open_message()
        assert self.message is not None
        self.text.append(piece)
        self.publish("thread.message.delta", {
            "id": self.message["id"],
            "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": {"value": piece, "annotations": []}}]},
        })
        self.rt.text_flush.due(self.message["id"], self._text_so_far)

    def _sync_text(self) -> None:
        if self.message is not None:
            self.message["content"] = [o.text_part("".join(self.text))]

    def _text_so_far(self) -> Obj | None:
        """The partial answer, for the periodic flush that keeps it durable while it streams
        (retrievable, and kept on a crash); the turn never waits for that write."""
        self._sync_text()
        return self.message

    async def _stop_flushing(self) -> None:
        """The turn writes its message's final state itself: no partial flush may land after it."""
        if self.message is not None:
            await self.rt.text_flush.forget(self.message["id"])

    # ------------------------------------------------------------ tool calls

    async def _open_tool_step(self) -> Obj:
        step = o.new_step(self.run, "tool_calls", {"type": "tool_calls", "tool_calls": []})
        await self.rt.store.save_step(step)
        self.tool_step = step
        self.publish("thread.run.step.created", step)
        self.publish("thread.run.step.in_progress", step)
        return step

    async def _on_tool_calls(self, deltas: list[ChoiceDeltaToolCall]) -> None:
        step = self.tool_step or await self._open_tool_step()
        for delta in deltas:
            first = delta.index not in self.calls
            call = self.calls.setdefault(delta.index, {
                "id": new_id("call"), "type": "function",
                "function": {"name": "", "arguments": "", "output": None},
            })
            name = (delta.function.name if delta.function else None) or ""
            arguments = (delta.function.arguments if delta.function else None) or ""
            call["function"]["name"] += name
            call["function"]["arguments"] += arguments
            entry: Obj = {"index": delta.index, "type": "function",
                          "function": {"name": name, "arguments": arguments, "output": None}}
            if first:
                entry["id"] = call["id"]
            if self._is_search(call):  # shown as a file_search call when it is answered
                continue
            if self._is_code(call):
                self._publish_code_input(step, delta.index, call, arguments, first)
                continue
            self.publish("thread.run.step.delta", {
                "id": step["id"], "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": [entry]}},
            })

    def _is_search(self, call: Obj) -> bool:
        return self.searching and call["type"] == "function" and call["function"]["name"] == file_search.NAME

    def _is_code(self, call: Obj) -> bool:
        return self.coding and call["type"] == "function" and call["function"]["name"] == code_tool.NAME

    def _publish_code_input(self, step: Obj, index: int, call: Obj, arguments: str, first: bool) -> None:
        """Stream the code as the model writes it, as a `code_interpreter` call's `input`."""
        piece = self.code_inputs.setdefault(index, code_tool.InputStream()).feed(arguments)
        if not piece and not first:
            return
        entry: Obj = {"index": index, "type": code_tool.NAME, code_tool.NAME: {"input": piece}}
        if first:
            entry["id"] = call["id"]
            entry[code_tool.NAME]["outputs"] = []
        self.publish("thread.run.step.delta", {
            "id": step["id"], "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [entry]}},
        })

    async def _answer_served_calls(self) -> None:
        """Answer the model's file_search and code_interpreter calls: each becomes its tool
        call object (search results; code input and outputs)."""
        for index, call in self.calls.items():
            if self._is_search(call):
                self.calls[index] = await file_search.search(self.rt.retriever, self.run, self.store_ids, call)
            elif self._is_code(call):
                self.calls[index] = await self._run_code(index, call)

    async def _run_code(self, index: int, call: Obj) -> Obj:
        """Run the call's code in the thread's session; files it writes and images it shows
        become Files."""
        assert self.rt.code_pool is not None and self.tool_step is not None
        code = code_tool.code_of(call["function"]["arguments"])
        files = FileStore(self.rt.store.db, self.rt.settings.files_dir)
        wanted = await code_tool.input_file_ids(self.rt.store, self.run)
        result = await self.rt.code_pool.execute(self.run["thread_id"], code,
                                                 await code_tool.input_files(files, wanted))
        written = [(path.name, (await files.add_bytes(path.name, code_tool.OUTPUT_PURPOSE,
                                                      await asyncio.to_thread(path.read_bytes)))["id"])
                   for path in result.files]
        logs = "\n".join(part for part in (result.logs, code_tool.written_notes(written)) if part)
        outputs = [code_tool.logs_output(logs)] if logs else []
        for number, png in enumerate(result.images):
            image = await files.add_bytes(f"image-{number}.png", code_tool.OUTPUT_PURPOSE, png)
            outputs.append(code_tool.image_output(image["id"]))
        self.publish("thread.run.step.delta", {
            "id": self.tool_step["id"], "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [
                {"index": index, "type": code_tool.NAME,
                 code_tool.NAME: {"outputs": [{"index": i, **out} for i, out in enumerate(outputs)]}}]}},
        })
        return code_tool.call_object(call["id"], code, outputs)

    # ------------------------------------------------------------ ending the turn

    def _turn_usage(self) -> Obj:
        if self.usage is not None:
            return self.usage
        completion = len(self.text) + sum(len(c["function"]["arguments"]) // 4 for c in self.calls.values())
        return {"prompt_tokens": self.prompt_estimate, "completion_tokens": completion,
                "total_tokens": self.prompt_estimate + completion}

    async def _finish(self, used: Obj) -> bool:
        if self.message is None and not self.calls:
            await self._open_message()
        usage = self._turn_usage()
        max_prompt = self.run.get("max_prompt_tokens")
        over_prompt = max_prompt is not None and used["prompt_tokens"] + usage["prompt_tokens"] > max_prompt
        length = self.finish_reason == "length"
        wants_tools = bool(self.calls) and not length and not over_prompt
        if wants_tools:
            await self._answer_served_calls()
        answered_only = wants_tools and all(c["type"] in (file_search.NAME, code_tool.NAME)
                                            for c in self.calls.values())
        store = self.rt.store
        events: list[tuple[str, Obj]] = []
        await self._stop_flushing()
        async with store.db.transaction() as tx:
            last_step = self.tool_step or self.message_step
            if self.message is not None and self.message_step is not None:
                events += await self._complete_message(tx, truncated=length, usage=usage if last_step is self.message_step else None)
            settled: Obj | Settled | None
            if answered_only:
                events.append(("thread.run.step.completed", await self._complete_answered(tx, usage)))
                settled = None
            elif wants_tools:
                settled = await self._require_action(tx, usage)
            else:
                if self.tool_step is not None:
                    self.tool_step["usage"] = usage
                    await store.save_step(self.tool_step, tx)
                settled = await self._settle_turn(tx, length, over_prompt)
        if settled is None and not answered_only:
            await self._lost_race()
            return False
        for event, data in events:
            self.publish(event, data)
        if isinstance(settled, Settled):
            settled.publish(self.rt.broker)
        elif settled is not None:
            self.publish("thread.run.requires_action", settled)
        return answered_only

    async def _complete_answered(self, tx: Any, usage: Obj) -> Obj:
        """Every call was answered by assistd: the step is complete and the turn goes on."""
        assert self.tool_step is not None
        self.tool_step["step_details"]["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        self.tool_step.update(status="completed", completed_at=now(), usage=usage)
        await self.rt.store.save_step(self.tool_step, tx)
        return self.tool_step

    async def _complete_message(self, tx: Any, *, truncated: bool, usage: Obj | None) -> list[tuple[str, Obj]]:
        assert self.message is not None and self.message_step is not None
        self._sync_text()
        message, step = self.message, self.message_step
        for part in message["content"]:
            text = part["text"]["value"]
            part["text"]["annotations"] = sorted(
                file_search.citations(text, self.steps) + code_tool.file_paths(text, self.steps),
                key=lambda a: a["start_index"])
        message["content"] += code_tool.image_parts(self.steps)
        if truncated:
            message.update(status="incomplete", incomplete_at=now(), incomplete_details={"reason": "max_tokens"})
        else:
            message.update(status="completed", completed_at=now())
        step.update(status="completed", completed_at=now(), usage=usage or {
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
        await self.rt.store.save_message(message, tx)
        await self.rt.store.save_step(step, tx)
        return [(f"thread.message.{message['status']}", message), ("thread.run.step.completed", step)]

    async def _require_action(self, tx: Any, usage: Obj) -> Obj | None:
        assert self.tool_step is not None
        calls = [self.calls[i] for i in sorted(self.calls)]
        self.tool_step["step_details"]["tool_calls"] = calls
        self.tool_step["usage"] = usage
        await self.rt.store.save_step(self.tool_step, tx)
        action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
            for c in calls if c["type"] == "function"
        ]}}
        return await self.rt.store.transition(self.run_id, RunStatus.REQUIRES_ACTION, tx, required_action=action)

    async def _settle_turn(self, tx: Any, length: bool, over_prompt: bool) -> Settled | None:
        if length or over_prompt:
            reason = "max_completion_tokens" if length else "max_prompt_tokens"
            return await settle_in(tx, self.rt.store, self.run_id, RunStatus.INCOMPLETE,
                                   incomplete_details={"reason": reason})
        return await settle_in(tx, self.rt.store, self.run_id, RunStatus.COMPLETED)

    async def _end_incomplete(self, reason: str) -> None:
        await self._end(RunStatus.INCOMPLETE, incomplete_details={"reason": reason})

    async def _end(self, target: RunStatus, **fields: Any) -> None:
        """Settle the run; if a cancel got there first, finish the cancellation instead.
        The final text is written in the settling transaction: one commit, so a cancelled
        run shows `cancelled` sooner."""
        await self._stop_flushing()
        self._sync_text()
        async with self.rt.store.db.transaction() as tx:
            if self.message is not None:
                await self.rt.store.save_message(self.message, tx)
            settled = await settle_in(tx, self.rt.store, self.run_id, target, **fields)
        if settled is None:
            await self._lost_race()
        else:
            settled.publish(self.rt.broker)

    async def _lost_race(self) -> None:
        run = await self.rt.store.get_run_by_id(self.run_id)
        if run is not None and run["status"] == RunStatus.CANCELLING:
            await self._end(RunStatus.CANCELLED)

    @property
    def wrote_anything(self) -> bool:
        return self.message is not None or self.message_step is not None or self.tool_step is not None

    async def _after_stop(self) -> None:
        if self.stop_reason == StopReason.LOST:
            return
        if self.stop_reason == StopReason.SHUTDOWN and not self.wrote_anything:
            if await hand_back(self.rt, self.run_id):
                return
        if self.stop_reason == StopReason.SHUTDOWN:
            error = {"code": "server_error", "message": "assistd stopped while the run was in progress."}
            await self._end(RunStatus.FAILED, last_error=error)
        else:
            await self._end(RunStatus.CANCELLED, only_from=(RunStatus.CANCELLING.value,))
