"""Call records (in memory for now; the data-layer issue moves them to Postgres)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from media_bridge.session import TurnRecord


@dataclass
class CallRecord:
    call_id: str
    channel: str
    language: str
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    ended_reason: str | None = None
    state: str = "listening"
    turns: list[TurnRecord] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "channel": self.channel, "language": self.language,
                "started_at": self.started_at, "ended_at": self.ended_at, "ended_reason": self.ended_reason,
                "state": self.state, "turns": len(self.turns)}

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        out["turns"] = [t.as_event() | {"type": None} for t in self.turns]
        for t in out["turns"]:
            t.pop("type")
        return out


class CallStore:
    """Keeps the most recent ``capacity`` calls."""

    def __init__(self, capacity: int = 1000) -> None:
        self._calls: OrderedDict[str, CallRecord] = OrderedDict()
        self._capacity = capacity

    def add(self, record: CallRecord) -> None:
        self._calls[record.call_id] = record
        while len(self._calls) > self._capacity:
            self._calls.popitem(last=False)

    def get(self, call_id: str) -> CallRecord | None:
        return self._calls.get(call_id)

    def list(self, limit: int = 50) -> list[CallRecord]:
        return list(reversed(self._calls.values()))[:limit]
