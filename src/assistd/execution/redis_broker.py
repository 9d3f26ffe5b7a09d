"""Run events through Redis Streams: one stream per run (`assistd:run:<run_id>:events`).

Publishing appends to an in-process outbox that one task writes to Redis with pipelined
XADDs, so events leave in the order they were published and the run never waits on Redis.
Watchers XREAD the run's stream from an event id: every event after it, in order, once —
which is also how a client that reconnects resumes. A run's stream expires
`events_ttl_seconds` after the run stops (it is capped at MAX_EVENTS entries meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from assistd.execution.broker import Event, Subscription, serialize
from assistd.lifecycle.states import STREAM_STOPS

log = logging.getLogger("assistd.events")
MAX_EVENTS = 100_000
# A stream entry: its id and fields. str, not bytes: the client decodes responses (redis-py's
# return types don't follow decode_responses=True, hence the ignores where one is read).
Entry = tuple[str, dict[str, str]]
MAX_OUTBOX = 100_000  # events held while Redis is unreachable; streams fall back to the database
READ_BATCH = 500
STOP_EVENTS = frozenset(f"thread.run.{status.value}" for status in STREAM_STOPS)
RETRY_SECONDS = 0.5
FLUSH_WAIT_SECONDS = 1.0
SOCKET_TIMEOUT_SECONDS = 30.0


def stream_key(run_id: str) -> str:
    return f"assistd:run:{run_id}:events"


class RedisSubscription:
    def __init__(self, redis: Redis, run_id: str, after: str) -> None:
        self.redis = redis
        self.run_id = run_id
        self.key = stream_key(run_id)
        self.last = after
        self.pending: deque[Event] = deque()

    async def get(self, timeout: float) -> Event | None:
        if not self.pending:
            await self._read(timeout)
        return self.pending.popleft() if self.pending else None

    async def _read(self, timeout: float) -> None:
        try:
            answer: list[tuple[str, list[Entry]]] | None = await self.redis.xread(  # type: ignore[assignment]
                {self.key: self.last}, count=READ_BATCH, block=max(1, int(timeout * 1000)))
        except RedisError as exc:  # the caller re-reads the run's state meanwhile
            log.warning("reading events of %s failed: %s", self.run_id, exc)
            await asyncio.sleep(min(timeout, RETRY_SECONDS))
            return
        for _key, entries in answer or ():
            for entry_id, fields in entries:
                self.pending.append(Event(fields["e"], fields["d"], entry_id))
                self.last = entry_id

    async def close(self) -> None:
        return None


class UnheardSubscription:
    """Redis could not say where a run's events stand: the stream hears nothing from it and
    follows the run from the database (execution/fallback.py)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    async def get(self, timeout: float) -> Event | None:
        await asyncio.sleep(min(timeout, RETRY_SECONDS))
        return None

    async def close(self) -> None:
        return None


class RedisBroker:
    replays = True

    def __init__(self, url: str, ttl_seconds: float) -> None:
        # Every watcher blocks in its own XREAD, so the pool must not cap connections low, and
        # the socket timeout must outlast the longest block (redis-py's default, 5 s, does not).
        self.redis: Redis = Redis.from_url(url, decode_responses=True, max_connections=2**20,
                                           socket_timeout=SOCKET_TIMEOUT_SECONDS)
        self.ttl = max(1, int(ttl_seconds))
        self._outbox: deque[tuple[str, str, str]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._dropped = 0

    async def start(self) -> None:
        await self.redis.ping()
        self._writer = asyncio.create_task(self._write_loop(), name="assistd-events-writer")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), 5)
        except TimeoutError:
            log.warning("%d run events were not written to Redis before stopping", len(self._outbox))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.redis.aclose()

    def publish(self, run_id: str, event: str, data: Any) -> None:
        if len(self._outbox) >= MAX_OUTBOX:  # Redis has been away long: the oldest go
            self._outbox.popleft()
            self._dropped += 1
        self._outbox.append((run_id, event, serialize(data)))
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait for the outbox to reach Redis, but not for long: a cancel must not hang on a
        Redis outage (its order relative to the worker's events is then not guaranteed)."""
        try:
            await asyncio.wait_for(self._idle.wait(), FLUSH_WAIT_SECONDS)
        except TimeoutError:
            log.warning("run events are not reaching Redis; going on without them")

    async def subscribe(self, run_id: str, after: str | None = None) -> Subscription:
        if after is None:  # from now: after the newest event the run's stream holds
            try:
                newest: list[Entry] = await self.redis.xrevrange(stream_key(run_id), count=1)  # type: ignore[assignment]
            except RedisError as exc:
                log.warning("Redis unreachable (%s): the stream of %s follows the database", exc, run_id)
                return UnheardSubscription(run_id)
            after = newest[0][0] if newest else "0"
        return RedisSubscription(self.redis, run_id, after)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 1000))]
                await self._write(batch)
            if not self._outbox:
                self._idle.set()

    async def _write(self, batch: list[tuple[str, str, str]]) -> None:
        """Write a batch in order; on a Redis error, retry it (watchers fall back to polling)."""
        while True:
            pipe = self.redis.pipeline(transaction=False)
            for run_id, event, data in batch:
                key = stream_key(run_id)
                pipe.xadd(key, {"e": event, "d": data}, maxlen=MAX_EVENTS, approximate=True)
                if event in STOP_EVENTS:
                    pipe.expire(key, self.ttl)
            try:
                await pipe.execute()
                if self._dropped:
                    log.warning("Redis is back; %d run events were dropped while it was away", self._dropped)
                    self._dropped = 0
                return
            except RedisError as exc:
                log.warning("writing %d run events to Redis failed (%s); retrying", len(batch), exc)
                await asyncio.sleep(RETRY_SECONDS)
