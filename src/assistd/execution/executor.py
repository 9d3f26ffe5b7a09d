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

from assistd.domain import objects as o
from assistd.domain.ids import new_id, now
from assistd.domain.run_state import RunStatus
from assistd.execution import code_tool, file_search, prompt, vision
from assistd.execution.message_parts import StreamedText, image_delta
from assistd.execution.runtime import Runtime
from assistd.execution.settle import Settled, run_usage, settle_in
from assistd.execution.sweeper import hand_back
from assistd.execution.upstream import Chunk, ToolCallDelta, UpstreamError
from assistd.observability import runs as observed
from assistd.storage.db import DatabaseUnavailable
from assistd.storage.files import FileStore

log = logging.getLogger("assistd.executor")
Obj = dict[str, Any]
DATABASE_RETRY_SECONDS = 1.0
DATABASE_LOST = {"code": "server_error", "message": "The database was unavailable while the run was in progress."}


class RunGone(Exception):
    """The run's thread was deleted while the turn ran: there is nothing left to write."""


class StopReason:
    CANCEL = "cancel"  # the run is `cancelling`: finish the cancellation
    SHUTDOWN = "shutdown"  # this process is stopping: hand the run back, or fail it
    LOST = "lost"  # the run is no longer ours (lease lapsed): write nothing more
    EXPIRE = "expire"  # the run reached its `expires_at`: it ends `expired`


class RunTurn:
    def __init__(self, rt: Runtime, run: Obj) -> None:
        self.rt = rt
        self.run = run
        self.stop_reason = StopReason.CANCEL
        self.ending = False  # the turn is recording how it ended: expiry no longer interrupts it
        self.store_ids: list[str] = []  # the vector stores file_search looks in
        self.steps: list[Obj] = []  # the run's steps before this upstream call
        self.searching = False  # the model is offered file_search in this call
        self.coding = False  # the model is offered code_interpreter in this call
        self.watch: observed.Turn | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget the last upstream call: the next one starts afresh from the database."""
        self.message: Obj | None = None
        self.message_step: Obj | None = None
        self.tool_step: Obj | None = None
        self.calls: dict[int, Obj] = {}
        self.code_inputs: dict[int, code_tool.InputStream] = {}
        self.pieces = 0  # text deltas the upstream sent: the completion estimate without its usage
        self.images: list[Obj] = []  # the message's image_file parts, before its text
        self.streamed: StreamedText | None = None  # the message's text part, as sent
        self.usage: Obj | None = None
        self.finish_reason: str | None = None
        self.prompt_estimate = 0

    @property
    def run_id(self) -> str:
        return str(self.run["id"])

    def publish(self, event: str, data: Any) -> None:
        if self.watch is not None and event.endswith(".delta"):
            self.watch.first_delta()
        self.rt.broker.publish(self.run_id, event, data)

    async def execute(self) -> None:
        """Run the turn to its end; every way out leaves the run in a truthful status."""
        try:
            await self._turn()
        except asyncio.CancelledError:
            await self._record_end(asyncio.shield(self._after_stop()))
        except (UpstreamError, file_search.ExpiredStore) as exc:
            await self._record_end(self._end(RunStatus.FAILED, last_error={"code": exc.code, "message": exc.message}))
        except RunGone:
            log.info("run %s: its thread was deleted; the turn stops", self.run_id)
        except DatabaseUnavailable as exc:
            log.warning("run %s: the database became unavailable (%s); it fails once the database is back",
                        self.run_id, exc)
            await self._record_end(self._fail_when_database_is_back())
        except Exception as exc:  # a bug must not strand the run in_progress
            if await self._gone():
                log.info("run %s: its thread was deleted; the turn stops (%s)", self.run_id, type(exc).__name__)
                return
            log.exception("run %s failed inside assistd", self.run_id)
            error = {"code": "server_error", "message": f"assistd error: {type(exc).__name__}"}
            await self._record_end(self._end(RunStatus.FAILED, last_error=error))
        finally:
            observed.end_turn(self.watch)

    async def _fail_when_database_is_back(self) -> None:
        """The turn can't go on without its database (the upstream request is already
        closed): record why the run failed as soon as it answers again. The turn stays this
        worker's meanwhile, so the heartbeat keeps its lease once it can."""
        while True:
            try:
                await self._end(RunStatus.FAILED, last_error=DATABASE_LOST)
                return
            except DatabaseUnavailable:
                await asyncio.sleep(DATABASE_RETRY_SECONDS)

    async def _gone(self) -> bool:
        """Whether the run was deleted (with its thread); asked while handling another failure,
        so a failure to ask must not replace that one."""
        try:
            return await self.rt.store.get_run_by_id(self.run_id) is None
        except Exception:  # noqa: BLE001
            return False

    async def _lock_thread(self, tx: Any) -> None:
        """Take the thread's row before the run's rows (see Store.lock_thread_of_run)."""
        if not await self.rt.store.lock_thread_of_run(tx, self.run_id):
            raise RunGone(self.run_id)

    async def _record_end(self, ending: Awaitable[None]) -> None:
        """Write how the turn ended; if the database refuses (it is down, or out of
        connections), the run's lease lapses and a sweeper settles it."""
        self.ending = True
        try:
            await ending
        except Exception:
            log.exception("run %s: could not record how its turn ended; its lease will lapse", self.run_id)

    # ------------------------------------------------------------ the turn

    async def _turn(self) -> None:
        self.watch = await observed.start_turn(self.rt.store, self.run)
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
        if self.message is None and code_tool.image_parts(steps):
            await self._open_message()  # the images are shown as soon as they exist
        images = await vision.data_urls(FileStore(store.db, self.rt.settings.files_dir), history)
        request = self._request(history, steps, used, images)
        if isinstance(request, str):
            await self._end_incomplete(request)
            return False
        with observed.upstream_call(request) as call:
            async with self.rt.upstream.stream(request, deadline=self.run.get("expires_at")) as chunks:
                call.opened()
                async for chunk in chunks:
                    await self._on_chunk(chunk)
            call.usage(self.usage)
        if self.finish_reason is None:  # the connection ended without the completion's end
            raise UpstreamError("server_error", "The upstream stream ended before the completion finished.")
        return await self._finish(used)

    def _budgets(self, used: Obj) -> tuple[int | None, int | None]:
        max_prompt = self.run.get("max_prompt_tokens")
        max_completion = self.run.get("max_completion_tokens")
        prompt_left = None if max_prompt is None else max_prompt - used["prompt_tokens"]
        completion_left = None if max_completion is None else max_completion - used["completion_tokens"]
        return prompt_left, completion_left

    def _request(self, history: list[Obj], steps: list[Obj], used: Obj, images: dict[str, str]) -> Obj | str:
        """The upstream request, or the budget (`incomplete_details.reason`) that forbids it;
        `images`: the data: URLs of the user's image files."""
        prompt_left, completion_left = self._budgets(used)
        if completion_left is not None and completion_left <= 0:
            return "max_completion_tokens"
        run_messages = [m for m in history if m["run_id"] == self.run_id]
        thread, own = prompt.conversation(self.run, history, steps, run_messages, images)
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

    async def _on_chunk(self, chunk: Chunk) -> None:
        if (usage := chunk.get("usage")) is not None:
            self.usage = {
                "prompt_tokens": usage["prompt_tokens"],
                "completion_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            }
        for choice in chunk.get("choices") or ():
            delta = choice["delta"]
            if content := delta.get("content"):
                await self._on_text(content)
            if tool_calls := delta.get("tool_calls"):
                await self._on_tool_calls(tool_calls)
            if finish_reason := choice.get("finish_reason"):
                self.finish_reason = finish_reason

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
            await self._lock_thread(tx)
            await self.rt.store.save_step(step, tx)
            await self.rt.store.insert_message(message, tx)
        self.message, self.message_step = message, step
        self.publish("thread.run.step.created", step)
        self.publish("thread.run.step.in_progress", step)
        self.publish("thread.message.created", message)
        self.publish("thread.message.in_progress", message)
        await self._show_images()

    async def _show_images(self) -> None:
        """The images the run's code displayed since its last message open this one, each a
        delta at its own content index."""
        assert self.message is not None
        self.images = code_tool.image_parts(self.steps)
        if not self.images:
            return
        self._sync_text()
        await self.rt.store.save_message(self.message)
        for index, part in enumerate(self.images):
            self._publish_delta(image_delta(index, part))

    def _publish_delta(self, part: Obj) -> None:
        assert self.message is not None
        self.publish("thread.message.delta", self._delta(part))

    def _delta(self, part: Obj) -> Obj:
        assert self.message is not None
        return {"id": self.message["id"], "object": "thread.message.delta", "delta": {"content": [part]}}

    async def _on_text(self, piece: str) -> None:
        if self.message is None:
            await self._open_message()
        assert self.message is not None
        if self.streamed is None:
            self.streamed = StreamedText(self.steps, len(self.images))
        self.pieces += 1
        if (part := self.streamed.feed(piece)) is not None:
            self._publish_delta(part)
        self.rt.text_flush.due(self.message["id"], self._text_so_far)
        if (outage := self.rt.text_flush.outage(self.message["id"])) is not None:
            # The partial answer can't be kept: stop generating (leaving raises through the
            # upstream stream's block, which closes the request).
            raise DatabaseUnavailable(str(outage))

    def _sync_text(self) -> None:
        if self.message is not None:
            text = [self.streamed.part()] if self.streamed is not None else []
            self.message["content"] = [*self.images, *text]

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

    async def _on_tool_calls(self, deltas: list[ToolCallDelta]) -> None:
        step = self.tool_step or await self._open_tool_step()
        for delta in deltas:
            first = delta["index"] not in self.calls
            call = self.calls.setdefault(delta["index"], {
                "id": new_id("call"), "type": "function",
                "function": {"name": "", "arguments": "", "output": None},
            })
            name = (delta.get("function") or {}).get("name") or ""
            arguments = (delta.get("function") or {}).get("arguments") or ""
            call["function"]["name"] += name
            call["function"]["arguments"] += arguments
            entry: Obj = {"index": delta["index"], "type": "function",
                          "function": {"name": name, "arguments": arguments, "output": None}}
            if first:
                entry["id"] = call["id"]
            if self._is_search(call):  # shown as a file_search call when it is answered
                continue
            if self._is_code(call):
                self._publish_code_input(step, delta["index"], call, arguments, first)
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
                with observed.tool_call(file_search.NAME, run_id=self.run_id):
                    self.calls[index] = await file_search.search(self.rt.retriever, self.run, self.store_ids, call)
            elif self._is_code(call):
                with observed.tool_call(code_tool.NAME, run_id=self.run_id):
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
        written = await code_tool.store_written(files, result.files)
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
        completion = self.pieces + sum(len(c["function"]["arguments"]) // 4 for c in self.calls.values())
        return {"prompt_tokens": self.prompt_estimate, "completion_tokens": completion,
                "total_tokens": self.prompt_estimate + completion}

    async def _finish(self, used: Obj) -> bool:  # noqa: C901 - to be split with the run lifecycle (issue 11)
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
            await self._lock_thread(tx)
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
        last = self._last_text_delta()
        self._sync_text()
        message, step = self.message, self.message_step
        if truncated:
            message.update(status="incomplete", incomplete_at=now(), incomplete_details={"reason": "max_tokens"})
        else:
            message.update(status="completed", completed_at=now())
        step.update(status="completed", completed_at=now(), usage=usage or {
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
        await self.rt.store.save_message(message, tx)
        await self.rt.store.save_step(step, tx)
        return [*last, (f"thread.message.{message['status']}", message), ("thread.run.step.completed", step)]

    def _last_text_delta(self) -> list[tuple[str, Obj]]:
        """The delta that ends the text: the annotation of a path at its very end, or the empty
        text part of a message that has nothing else (so deltas add up to the whole message)."""
        if self.streamed is None and self.images:
            return []
        if self.streamed is None:
            self.streamed = StreamedText(self.steps, 0)
            part: Obj | None = self.streamed.feed("")
            part = part or {"index": 0, "type": "text", "text": {"value": "", "annotations": []}}
        else:
            part = self.streamed.feed("", final=True)
        return [] if part is None else [("thread.message.delta", self._delta(part))]

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
        if self.stop_reason == StopReason.EXPIRE:
            await self._end(RunStatus.EXPIRED, only_from=(RunStatus.IN_PROGRESS.value,))
            return
        if self.stop_reason == StopReason.SHUTDOWN and not self.wrote_anything:  # noqa: SIM102 - hand_back is a write, tried only here
            if await hand_back(self.rt, self.run_id):
                return
        if self.stop_reason == StopReason.SHUTDOWN:
            error = {"code": "server_error", "message": "assistd stopped while the run was in progress."}
            await self._end(RunStatus.FAILED, last_error=error)
        else:
            await self._end(RunStatus.CANCELLED, only_from=(RunStatus.CANCELLING.value,))
