"""What the HTTP side and the worker share inside one process."""

from __future__ import annotations

from dataclasses import dataclass

from assistd.config import Settings
from assistd.execution.broker import Broker, Signals
from assistd.execution.upstream import Upstream
from assistd.storage.store import Store


@dataclass
class Runtime:
    settings: Settings
    store: Store
    broker: Broker
    signals: Signals
    upstream: Upstream
