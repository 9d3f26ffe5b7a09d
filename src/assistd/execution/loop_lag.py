"""Event-loop lag: how late this process's event loop runs a timer, kept for operators.

A timer fires every TICK_SECONDS; how late it fires is the loop's lag, the time during
which no request, stream or cancel of this process could make progress. `figures()` gives
the worst lag since start, the worst of the last RECENT_SECONDS and the count of stalls
(lags ≥ STALL_SECONDS), as plain numbers for a metrics endpoint.

A stall is also logged, with what it was: a watchdog thread that sees the loop silent for
STALL_SECONDS logs the loop thread's stack at that moment (once per stall), and the timer
logs the stall's length when the loop is back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("assistd.loop_lag")
TICK_SECONDS = 0.02
STALL_SECONDS = 0.1
RECENT_SECONDS = 60
STACK_FRAMES = 12


class LoopLag:
    def __init__(self) -> None:
        self.max_seconds = 0.0
        self.last_seconds = 0.0
        self.stalls = 0
        self._per_second: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT_SECONDS + 1)
        self._tick = time.monotonic()
        self._reported_tick = 0.0  # the tick whose stall the watchdog already logged
        self._task: asyncio.Task[None] | None = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._tick = time.monotonic()
        self._task = asyncio.create_task(self._measure(), name="assistd-loop-lag")
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name="assistd-loop-watchdog", daemon=True)
        self._watchdog.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.join, 1.0)

    async def _measure(self) -> None:
        while True:
            before, cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(TICK_SECONDS)
            self._tick = now = time.monotonic()
            self.record(max(0.0, now - before - TICK_SECONDS), time.thread_time() - cpu)

    def record(self, lag: float, cpu: float = 0.0) -> None:
        """One measurement; `cpu` is the loop thread's CPU time meanwhile (a stall mostly off
        the CPU is the machine's or the GIL's, not this loop's own work)."""
        self.last_seconds = lag
        self.max_seconds = max(self.max_seconds, lag)
        second = int(time.monotonic())
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1] = (second, max(self._per_second[-1][1], lag))
        else:
            self._per_second.append((second, lag))
        if lag >= STALL_SECONDS:
            self.stalls += 1
            log.warning("event loop stalled for %.0f ms (%.0f ms on the CPU)", lag * 1000, cpu * 1000)

    def recent_max(self) -> float:
        since = int(time.monotonic()) - RECENT_SECONDS
        return max((lag for second, lag in self._per_second if second >= since), default=0.0)

    def _watch(self) -> None:
        """In its own thread: catch the loop in the act of stalling, and say what it runs."""
        while not self._stop.wait(TICK_SECONDS):
            tick = self._tick
            if time.monotonic() - tick < STALL_SECONDS or tick == self._reported_tick:
                continue
            self._reported_tick = tick
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=STACK_FRAMES)) if frame else "(no frame)\n"
            log.warning("event loop silent for %.0f ms; its thread is running:\n%s",
                        (time.monotonic() - tick) * 1000, stack.rstrip())

    def figures(self) -> dict[str, float]:
        return {
            "max_seconds": self.max_seconds,
            "recent_max_seconds": self.recent_max(),
            "last_seconds": self.last_seconds,
            "stalls_total": float(self.stalls),
        }


_running: dict[str, LoopLag] = {}  # "monitor": this process's, once started


def start() -> LoopLag:
    """Measure this process's running loop (once per process; later calls return the same)."""
    if "monitor" not in _running:
        _running["monitor"] = LoopLag()
        _running["monitor"].start()
    return _running["monitor"]


async def stop() -> None:
    monitor = _running.pop("monitor", None)
    if monitor is not None:
        await monitor.stop()


def figures() -> dict[str, float]:
    """The figures a metrics endpoint exports (all zero before `start`):

    - `max_seconds`: the worst lag since the process started;
    - `recent_max_seconds`: the worst in the last RECENT_SECONDS seconds;
    - `last_seconds`: the latest measurement;
    - `stalls_total`: how many lags reached STALL_SECONDS.
    """
    monitor = _running.get("monitor")
    if monitor is None:
        return {"max_seconds": 0.0, "recent_max_seconds": 0.0, "last_seconds": 0.0, "stalls_total": 0.0}
    return monitor.figures()
