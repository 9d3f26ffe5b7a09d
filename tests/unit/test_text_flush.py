"""Partial answers of streaming runs are written together, and never over a final write."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from assistd.domain import objects as o
from assistd.execution.text_flush import TextFlusher
from assistd.lifecycle.records import Message
from assistd.storage.db import open_database
from assistd.storage.migrate import migrate
from assistd.storage.store import Store


class CountingStore(Store):
    """A real store that counts the transactions its database opens."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.db)
        self.transactions = 0
        opened = store.db.transaction

        def counted(inline: bool = False) -> Any:
            self.transactions += 1
            return opened(inline)

        self.db.transaction = counted  # type: ignore[method-assign]


async def _messages(store: Store, count: int) -> list[dict[str, Any]]:
    thread = o.new_thread({})
    await store.insert_thread(thread, [])
    messages = []
    for _ in range(count):
        message = o.new_message(thread["id"], "assistant", [], status="in_progress")
        messages.append(await store.insert_message(message))
    return messages


def _with_text(message: dict[str, Any], text: str) -> dict[str, Any]:
    return {**message, "content": [o.text_part(text)]}


async def _texts(store: Store, messages: list[dict[str, Any]]) -> list[str]:
    stored = [await store.get_message(m["thread_id"], m["id"]) for m in messages]
    return [m["content"][0]["text"]["value"] if m["content"] else "" for m in stored]


def test_partial_texts_of_many_runs_are_written_in_one_transaction(database_url: str) -> None:
    async def scenario() -> tuple[int, list[str]]:
        db = open_database(database_url)
        await db.connect()
        try:
            await migrate(db)
            store = CountingStore(Store(db))
            messages = await _messages(store, 5)
            flusher = TextFlusher(store, period=3600)
            before = store.transactions
            for i, message in enumerate(messages):
                flusher.due(message["id"], functools.partial(_with_text, message, f"partial {i}"))
            await flusher.flush()
            await flusher.close()
            return store.transactions - before, await _texts(store, messages)
        finally:
            await db.close()

    transactions, texts = asyncio.run(scenario())
    assert transactions == 1
    assert texts == [f"partial {i}" for i in range(5)]


def test_a_flush_under_way_never_lands_after_the_final_write(database_url: str) -> None:
    async def scenario() -> tuple[bool, list[str]]:
        db = open_database(database_url)
        await db.connect()
        try:
            await migrate(db)
            store = Store(db)
            [message] = await _messages(store, 1)
            flusher = TextFlusher(store, period=3600)
            flusher.due(message["id"], lambda: _with_text(message, "partial"))
            flushing = asyncio.create_task(flusher.flush())
            await asyncio.sleep(0)  # the flush has its snapshot and is writing it
            await flusher.forget(message["id"])
            waited = flushing.done()
            async with store.db.transaction() as tx:  # the turn's own final write
                await store.runs.save_message(tx, cast(Message, _with_text(message, "final")))
            flusher.due(message["id"], lambda: _with_text(message, "stale"))
            await flusher.forget(message["id"])  # a turn that ends takes its message out
            await flusher.flush()
            await flusher.close()
            return waited, await _texts(store, [message])
        finally:
            await db.close()

    waited, texts = asyncio.run(scenario())
    assert waited
    assert texts == ["final"]


def test_many_partial_texts_are_written_in_short_batches_so_other_writes_get_between(database_url: str) -> None:
    """40 messages: three transactions of at most FLUSH_BATCH; a message its turn takes out
    while the first batch is written is not written by a later batch."""
    async def scenario() -> tuple[int, list[str]]:
        db = open_database(database_url)
        await db.connect()
        try:
            await migrate(db)
            store = CountingStore(Store(db))
            messages = await _messages(store, 40)
            flusher = TextFlusher(store, period=3600)
            for i, message in enumerate(messages):
                flusher.due(message["id"], functools.partial(_with_text, message, f"partial {i}"))
            before = store.transactions
            flushing = asyncio.create_task(flusher.flush())
            await asyncio.sleep(0)  # the first batch is being written
            await flusher.forget(messages[-1]["id"])  # in the last batch: its turn ends meanwhile
            await flushing
            await flusher.close()
            return store.transactions - before, await _texts(store, messages)
        finally:
            await db.close()

    transactions, texts = asyncio.run(scenario())
    assert transactions == 3  # 16 + 16 + 7
    assert texts == [f"partial {i}" for i in range(39)] + [""]
