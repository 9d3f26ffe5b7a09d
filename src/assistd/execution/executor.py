"""One turn of a run: build the prompt, stream one upstream completion, record what the
model said (a message, or tool calls), and move the run to its next status.

The turn is a stream accumulator (call_state.py keeps what a call produced); how a call
ends the run is decided by lifecycle/outcome.py, and every status change goes through
lifecycle/changes.py. The thread's history and the run's steps are read once per turn and
kept up to date here: the turn is the only writer of its run's rows while it holds them.

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
from assistd.domain.ids import now
from assistd.execution import code_tool, file_search, prompt, vision
from assistd.execution.call_state import CallState
from assistd.execution.message_parts import StreamedText, image_delta
from assistd.execution.runtime import Runtime
from assistd.execution.upstream import Chunk, ToolCallDelta, UpstreamError
from assistd.lifecycle import changes
from assistd.lifecycle.changes import Left, Settled
from assistd.lifecycle.outcome import Next, Outcome, budgets, decide
from assistd.lifecycle.records import LastError, Message, Run, RunView, Step, Usage, add_usage, no_usage, usage_of
from assistd.lifecycle.run_store import Tx
from assistd.lifecycle.states import RunStatus
from assistd.observability import runs as observed
from assistd.storage.db import DatabaseUnavailable
from assistd.storage.files import FileStore

log = logging.getLogger("assistd.executor")
Obj = dict[str, Any]
DATABASE_RETRY_SECONDS = 1.0
DATABASE_LOST: LastError = {"code": "server_error",
                            "message": "The database was unavailable while the run was in progress."}
SHUT_DOWN: LastError = {"code": "server_error", "message": "assistd stopped while the run was in progress."}


class RunGone(Exception):
    """The run's thread was deleted while the turn ran: there is nothing left to write."""


class StopReason:
    CANCEL = "cancel"  # the run is `cancelling`: finish the cancellation
    SHUTDOWN = "shutdown"  # this process is stopping: hand the run back, or fail it
    LOST = "lost"  # the run is no longer ours (lease lapsed): write nothing more
    EXPIRE = "expire"  # the run reached its `expires_at`: it ends `expired`


class RunTurn:
    def __init__(self, rt: Runtime, run: Run) -> None:
        self.rt = rt
        self.run = run
        self.records = rt.lifecycle.records
        self.stop_reason = StopReason.CANCEL
        self.ending = False  # the turn is recording how it ended: expiry no longer interrupts it
        self.store_ids: list[str] = []  # the vector stores file_search looks in
        self.steps: list[Step] = []  # the run's steps, kept as the turn writes them
        self.history: list[Message] = []  # the thread's messages, kept likewise
        self.images: dict[str, str] = {}  # data: URLs of the user's image files
        self.used: Usage = no_usage()  # the run's usage so far, summed as calls end
        self.call = CallState()
        self.watch: observed.Turn | None = None

    @property
    def run_id(self) -> str:
        return self.run["id"]

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
            await self._record_end(self._end(RunStatus.FAILED, {"code": exc.code, "message": exc.message}))
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
            await self._record_end(self._end(RunStatus.FAILED, {"code": "server_error",
                                                                "message": f"assistd error: {type(exc).__name__}"}))
        finally:
            observed.end_turn(self.watch)

    async def _fail_when_database_is_back(self) -> None:
        """The turn can't go on without its database (the upstream request is already
        closed): record why the run failed as soon as it answers again. The turn stays this
        worker's meanwhile, so the heartbeat keeps its lease once it can."""
        while True:
            try:
                await self._end(RunStatus.FAILED, DATABASE_LOST)
                return
            except DatabaseUnavailable:
                await asyncio.sleep(DATABASE_RETRY_SECONDS)

    async def _gone(self) -> bool:
        """Whether the run was deleted (with its thread); asked while handling another failure,
        so a failure to ask must not replace that one."""
        try:
            return await self.records.get_run_by_id(self.run_id) is None
        except Exception:  # noqa: BLE001
            return False

    async def _lock_thread(self, tx: Tx) -> None:
        """Take the thread's row before the run's rows (see RunSQL.lock_thread_of_run)."""
        if not await self.records.lock_thread_of_run(tx, self.run_id):
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
        self.steps = await self.records.run_steps(self.run_id)
        for step in self.steps:
            self.used = add_usage(self.used, usage_of(step["usage"]))
        self.history = await self.records.thread_messages(self.run["thread_id"])
        self.images = await vision.data_urls(FileStore(self.rt.store.db, self.rt.settings.files_dir), self.history)
        while await self._call():
            self.call = CallState()

    async def _call(self) -> bool:
        """One upstream call; True when the turn goes on with another (served calls answered)."""
        steps = self.steps
        self.call.searching = bool(self.store_ids) and file_search.rounds(steps) < file_search.MAX_ROUNDS
        self.call.coding = (self.rt.code_pool is not None and code_tool.tool(self.run) is not None
                            and code_tool.rounds(steps) < code_tool.MAX_ROUNDS)
        if self.call.message is None and code_tool.image_parts(steps):
            await self._open_message()  # the images are shown as soon as they exist
        request = self._request()
        if isinstance(request, str):
            await self._end(RunStatus.INCOMPLETE, reason=request)
            return False
        with observed.upstream_call(request) as call:
            async with self.rt.upstream.stream(request, deadline=self.run["expires_at"]) as chunks:
                call.opened()
                async for chunk in chunks:
                    await self._on_chunk(chunk)
            call.usage(dict(self.call.usage) if self.call.usage is not None else None)
        if self.call.finish_reason is None:  # the connection ended without the completion's end
            raise UpstreamError("server_error", "The upstream stream ended before the completion finished.")
        return await self._finish()

    def _request(self) -> Obj | str:
        """The upstream request, or the budget (`incomplete_details.reason`) that forbids it."""
        left = budgets(self.run["max_prompt_tokens"], self.run["max_completion_tokens"], self.used)
        if left.exhausted is not None:
            return left.exhausted
        own = [m for m in self.history if m["run_id"] == self.run_id]
        thread, mine = prompt.conversation(self.run, self.history, self.steps, own, self.images)
        try:
            messages = prompt.truncate(self.run, prompt.system_messages(self.run), thread, mine, left.prompt_left)
        except prompt.PromptTooLong:
            return "max_prompt_tokens"
        self.call.prompt_estimate = prompt.estimate_tokens(messages)
        served = [*([file_search.FUNCTION] if self.call.searching else []),
                  *([code_tool.FUNCTION] if self.call.coding else [])]
        return prompt.build_request(self._request_run(), messages, left.completion_left,
                                    self.rt.upstream.max_tokens_param, served)

    def _request_run(self) -> RunView:
        """The run as the next request sees it: a `tool_choice` forcing file_search or
        code_interpreter forces only the first call of it."""
        run, choice = self.run, self.run["tool_choice"]
        steps = self.steps
        called = {file_search.NAME: file_search.rounds(steps), code_tool.NAME: code_tool.rounds(steps)}
        if isinstance(choice, dict) and called.get(choice.get("type") or ""):
            return {**run, "tool_choice": "auto"}
        return run

    async def _on_chunk(self, chunk: Chunk) -> None:
        if (usage := chunk.get("usage")) is not None:
            self.call.usage = {
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
                self.call.finish_reason = finish_reason

    # ------------------------------------------------------------ text

    async def _open_message(self) -> None:
        run = self.run
        message: Message = o.new_message(  # type: ignore[assignment]
            run["thread_id"], "assistant", [], status="in_progress",
            assistant_id=run["assistant_id"], run_id=self.run_id,
        )
        step: Step = o.new_step(run, "message_creation", {  # type: ignore[assignment]
            "type": "message_creation", "message_creation": {"message_id": message["id"]},
        })
        async with self.records.transaction() as tx:
            await self._lock_thread(tx)
            await self.records.insert_step(tx, step)
            await self.records.insert_message(tx, message)
        self.call.images = code_tool.image_parts(self.steps)  # since the run's last message
        self.call.message, self.call.message_step = message, step
        self.steps.append(step)
        self.history.append(message)
        self.publish("thread.run.step.created", step)
        self.publish("thread.run.step.in_progress", step)
        self.publish("thread.message.created", message)
        self.publish("thread.message.in_progress", message)
        await self._show_images()

    async def _show_images(self) -> None:
        """The images the run's code displayed since its last message open this one, each a
        delta at its own content index."""
        message = self.call.message
        assert message is not None
        if not self.call.images:
            return
        self.call.sync_text()
        async with self.records.transaction() as tx:
            await self.records.save_message(tx, message)
        for index, part in enumerate(self.call.images):
            self._publish_delta(image_delta(index, part))

    def _publish_delta(self, part: Obj) -> None:
        self.publish("thread.message.delta", self._delta(part))

    def _delta(self, part: Obj) -> Obj:
        assert self.call.message is not None
        return {"id": self.call.message["id"], "object": "thread.message.delta", "delta": {"content": [part]}}

    async def _on_text(self, piece: str) -> None:
        if self.call.message is None:
            await self._open_message()
        message = self.call.message
        assert message is not None
        if self.call.streamed is None:
            self.call.streamed = StreamedText(list(self.steps), len(self.call.images))
        if (part := self.call.streamed.feed(piece)) is not None:
            self._publish_delta(part)
        self.rt.text_flush.due(message["id"], self._text_so_far)
        if (outage := self.rt.text_flush.outage(message["id"])) is not None:
            # The partial answer can't be kept: stop generating (leaving raises through the
            # upstream stream's block, which closes the request).
            raise DatabaseUnavailable(str(outage))

    def _text_so_far(self) -> Obj | None:
        """The partial answer, for the periodic flush that keeps it durable while it streams
        (retrievable, and kept on a crash); the turn never waits for that write."""
        self.call.sync_text()
        return self.call.message  # type: ignore[return-value]

    async def _stop_flushing(self) -> None:
        """The turn writes its message's final state itself: no partial flush may land after it."""
        if self.call.message is not None:
            await self.rt.text_flush.forget(self.call.message["id"])

    # ------------------------------------------------------------ tool calls

    async def _open_tool_step(self) -> Step:
        step: Step = o.new_step(self.run, "tool_calls",  # type: ignore[assignment]
                                {"type": "tool_calls", "tool_calls": []})
        async with self.records.transaction() as tx:
            await self.records.insert_step(tx, step)
        self.call.tool_step = step
        self.steps.append(step)
        self.publish("thread.run.step.created", step)
        self.publish("thread.run.step.in_progress", step)
        return step

    async def _on_tool_calls(self, deltas: list[ToolCallDelta]) -> None:
        step = self.call.tool_step or await self._open_tool_step()
        for delta in deltas:
            index, function = delta["index"], delta.get("function") or {}
            name, arguments = function.get("name") or "", function.get("arguments") or ""
            call, first = self.call.add_call_piece(index, name, arguments)
            if self.call.is_search(call):  # shown as a file_search call when it is answered
                continue
            entry: Obj
            if self.call.is_code(call):  # the code as the model writes it, as the call's `input`
                piece = self.call.code_inputs.setdefault(index, code_tool.InputStream()).feed(arguments)
                if not piece and not first:
                    continue
                entry = {"index": index, "type": code_tool.NAME, code_tool.NAME: {"input": piece}}
                if first:
                    entry[code_tool.NAME]["outputs"] = []
            else:
                entry = {"index": index, "type": "function",
                         "function": {"name": name, "arguments": arguments, "output": None}}
            if first:
                entry["id"] = call["id"]
            self._publish_step_delta(step, entry)

    def _publish_step_delta(self, step: Step, entry: Obj) -> None:
        self.publish("thread.run.step.delta", {
            "id": step["id"], "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [entry]}},
        })

    async def _answer_served_calls(self) -> None:
        """Answer the model's file_search and code_interpreter calls: each becomes its tool
        call object (search results; code input and outputs)."""
        for index, call in self.call.calls.items():
            if self.call.is_search(call):
                with observed.tool_call(file_search.NAME, run_id=self.run_id):
                    self.call.calls[index] = await file_search.search(
                        self.rt.retriever, self.run, self.store_ids, call)
            elif self.call.is_code(call):
                with observed.tool_call(code_tool.NAME, run_id=self.run_id):
                    self.call.calls[index] = await self._run_code(index, call)

    async def _run_code(self, index: int, call: Obj) -> Obj:
        """Run the call's code in the thread's session; files it writes and images it shows
        become Files."""
        assert self.rt.code_pool is not None and self.call.tool_step is not None
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
        self._publish_step_delta(self.call.tool_step, {
            "index": index, "type": code_tool.NAME,
            code_tool.NAME: {"outputs": [{"index": i, **out} for i, out in enumerate(outputs)]}})
        return code_tool.call_object(call["id"], code, outputs)

    # ------------------------------------------------------------ ending a call

    async def _finish(self) -> bool:
        """Record how the call ended, as `decide` says; True when the turn calls again."""
        if self.call.message is None and not self.call.calls:
            await self._open_message()
        usage = self.call.turn_usage()
        outcome = decide(self.call.facts(self.used, self.run["max_prompt_tokens"]))
        if outcome.answers_calls:
            await self._answer_served_calls()
        await self._stop_flushing()
        events: list[tuple[str, Any]] = []
        async with self.records.transaction() as tx:
            await self._lock_thread(tx)
            events += await self._complete_message(tx, outcome, usage)
            events += await self._end_tool_step(tx, outcome, usage)
            ended = await self._record_outcome(tx, outcome, usage)
        if outcome.next is Next.CALL_AGAIN:
            self.used = add_usage(self.used, usage)
        elif ended is None:
            await self._lost_race()
            return False
        for event, data in events:
            self.publish(event, data)
        if isinstance(ended, Settled):
            ended.publish(self.rt.broker)
        elif ended is not None:
            self.publish("thread.run.requires_action", ended)
        return outcome.next is Next.CALL_AGAIN

    async def _end_tool_step(self, tx: Tx, outcome: Outcome, usage: Usage) -> list[tuple[str, Any]]:
        """The tool step with the call's usage and calls; complete when the turn calls again."""
        step = self.call.tool_step
        if step is None:
            return []
        step["usage"] = usage
        if outcome.answers_calls:
            step["step_details"]["tool_calls"] = self.call.ordered_calls()
        if outcome.next is Next.CALL_AGAIN:
            step["status"], step["completed_at"] = "completed", now()
        await self.records.save_step(tx, step)
        return [("thread.run.step.completed", step)] if outcome.next is Next.CALL_AGAIN else []

    async def _record_outcome(self, tx: Tx, outcome: Outcome, usage: Usage) -> Run | Settled | None:
        """The run's status change, within the call's last transaction."""
        if outcome.next is Next.CALL_AGAIN:
            return None
        if outcome.next is Next.REQUIRES_ACTION:
            return await changes.require_action(tx, self.records, self.run_id, action=self.call.required_action())
        total = add_usage(self.used, usage)
        if outcome.next is Next.COMPLETED:
            return await changes.complete(tx, self.records, self.run_id, usage=total)
        assert outcome.reason is not None
        tool_step = self.call.tool_step
        return await changes.end_incomplete(tx, self.records, self.run_id, reason=outcome.reason,
                                            left=Left(total, [tool_step] if tool_step else [], []))

    async def _complete_message(self, tx: Tx, outcome: Outcome, usage: Usage) -> list[tuple[str, Any]]:
        message, step = self.call.message, self.call.message_step
        if message is None or step is None:
            return []
        last = self._last_text_delta()
        self.call.sync_text()
        if outcome.truncated:
            message["status"], message["incomplete_at"] = "incomplete", now()
            message["incomplete_details"] = {"reason": "max_tokens"}
        else:
            message["status"], message["completed_at"] = "completed", now()
        step["status"], step["completed_at"] = "completed", now()
        step["usage"] = usage if self.call.tool_step is None else no_usage()
        await self.records.save_message(tx, message)
        await self.records.save_step(tx, step)
        return [*last, (f"thread.message.{message['status']}", message), ("thread.run.step.completed", step)]

    def _last_text_delta(self) -> list[tuple[str, Any]]:
        """The delta that ends the text: the annotation of a path at its very end, or the empty
        text part of a message that has nothing else (so deltas add up to the whole message)."""
        if self.call.streamed is None and self.call.images:
            return []
        part: Obj | None
        if self.call.streamed is None:
            self.call.streamed = StreamedText(list(self.steps), 0)
            part = self.call.streamed.feed("")
            part = part or {"index": 0, "type": "text", "text": {"value": "", "annotations": []}}
        else:
            part = self.call.streamed.feed("", final=True)
        return [] if part is None else [("thread.message.delta", self._delta(part))]

    # ------------------------------------------------------------ ending the turn otherwise

    def _with_text(self, left: Left) -> Left:
        """What the database holds open, with this call's message as streamed so far (the
        partial text may be newer than the last flush)."""
        message = self.call.message
        if message is None:
            return left
        self.call.sync_text()
        messages: list[Message] = [{**m, "content": message["content"]} if m["id"] == message["id"] else m
                                   for m in left.messages]
        return Left(left.usage, left.steps, messages)

    async def _end(self, target: RunStatus, error: LastError | None = None, *, reason: str | None = None) -> None:
        """End the run as `target`; if a cancel got there first, finish the cancellation
        instead. The final text is written in the same transaction: one commit, so a
        cancelled run shows `cancelled` sooner.

        What is left open is read from the database, not taken from the turn: a stop can
        interrupt a write whose commit the turn never saw (the rows exist, the turn doesn't
        know them), or one that rolled back after the turn changed its objects."""
        await self._stop_flushing()
        async with self.records.transaction() as tx:
            left = self._with_text(await changes.left_open(self.records, tx, self.run_id))
            if target is RunStatus.FAILED:
                assert error is not None
                settled = await changes.fail(tx, self.records, self.run_id, error=error, left=left)
            elif target is RunStatus.INCOMPLETE:
                assert reason is not None
                settled = await changes.end_incomplete(tx, self.records, self.run_id, reason=reason, left=left)
            elif target is RunStatus.EXPIRED:
                settled = await changes.expire(tx, self.records, self.run_id, status=RunStatus.IN_PROGRESS, left=left)
            else:
                settled = await changes.finish_cancel(tx, self.records, self.run_id, left=left)
        if settled is None:
            await self._lost_race()
        else:
            settled.publish(self.rt.broker)

    async def _lost_race(self) -> None:
        run = await self.records.get_run_by_id(self.run_id)
        if run is not None and run["status"] == RunStatus.CANCELLING:
            await self._end(RunStatus.CANCELLED)

    async def _after_stop(self) -> None:
        if self.stop_reason == StopReason.LOST:
            return
        if self.stop_reason == StopReason.EXPIRE:
            await self._end(RunStatus.EXPIRED)
        elif self.stop_reason == StopReason.CANCEL:
            await self._end(RunStatus.CANCELLED)
        elif self.call.wrote_anything or not await changes.hand_back(self.rt.lifecycle, self.run_id):
            await self._end(RunStatus.FAILED, SHUT_DOWN)
