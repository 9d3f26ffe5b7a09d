"""Races between status changes are decided by the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from assistd.domain import objects as o
from assistd.domain.run_state import RunStatus
from assistd.storage.db import Database, open_database
from assistd.storage.migrate import migrate
from assistd.storage.store import Store


async def _store(url: str) -> Store:
    db: Database = open_database(url)
    await db.connect()
    await migrate(db)
    return Store(db)


async def _in_progress_run(store: Store) -> dict[str, Any]:
    thread = o.new_thread({})
    await store.insert_thread(thread, [])
    assistant = o.new_assistant({"model": "m"})
    row = o.new_run_row(thread["id"], assistant, {}, 600)
    await store.create_run(row, [])
    run = await store.transition(row["id"], RunStatus.IN_PROGRESS)
    assert run is not None
    return run


async def _race(url: str, rounds: int) -> list[tuple[bool, bool]]:
    store = await _store(url)
    results = []
    try:
        for _ in range(rounds):
            run = await _in_progress_run(store)
            done, cancelling = await asyncio.gather(
                store.transition(run["id"], RunStatus.COMPLETED),
                store.transition(run["id"], RunStatus.CANCELLING),
            )
            results.append((done is not None, cancelling is not None))
            final = await store.get_run_by_id(run["id"])
            assert final is not None
            assert final["status"] == ("completed" if done is not None else "cancelling")
    finally:
        await store.db.close()
    return results


def test_completion_and_cancel_racing_yield_exactly_one_winner(database_url: str) -> None:
    results = asyncio.run(_race(database_url, rounds=30))
    assert all(a != b for a, b in results), results


async def _claim_all(url: str, runs: int, workers: int, batch: int) -> tuple[list[str], dict[str, list[str]]]:
    store = await _store(url)
    try:
        created = []
        for _ in range(runs):
            thread = o.new_thread({})
            await store.insert_thread(thread, [])
            row = o.new_run_row(thread["id"], o.new_assistant({"model": "m"}), {}, 600)
            created.append((await store.create_run(row, []))["id"])
        claimed: dict[str, list[str]] = {f"w{i}": [] for i in range(workers)}

        async def worker(name: str) -> None:
            while got := await store.claim_runs(name, batch):
                assert len(got) <= batch
                claimed[name].extend(run["id"] for run in got)
                assert all(run["status"] == "in_progress" for run in got)

        await asyncio.gather(*(worker(name) for name in claimed))
        return created, claimed
    finally:
        await store.db.close()


def test_workers_claiming_at_once_take_each_queued_run_exactly_once(database_url: str) -> None:
    created, claimed = asyncio.run(_claim_all(database_url, runs=40, workers=5, batch=3))
    taken = [run_id for runs in claimed.values() for run_id in runs]
    assert sorted(taken) == sorted(created)  # all of them, none twice
    for runs in claimed.values():  # each batch in queue order
        assert runs == sorted(runs, key=created.index)


async def _terminal_releases_thread(url: str) -> tuple[str | None, str | None]:
    store = await _store(url)
    try:
        run = await _in_progress_run(store)
        locked = await store.db.fetchone("SELECT active_run_id FROM threads WHERE id = :t", t=run["thread_id"])
        await store.transition(run["id"], RunStatus.COMPLETED)
        free = await store.db.fetchone("SELECT active_run_id FROM threads WHERE id = :t", t=run["thread_id"])
        assert locked is not None and free is not None
        return locked["active_run_id"], free["active_run_id"]
    finally:
        await store.db.close()


def test_reaching_a_terminal_status_releases_the_thread(database_url: str) -> None:
    locked, free = asyncio.run(_terminal_releases_thread(database_url))
    assert locked is not None and free is None
