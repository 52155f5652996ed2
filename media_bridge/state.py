"""The call's state machine, written down so that every transition is deliberate.

    listening ──speech──▶ user_speaking ──endpoint──▶ thinking ──first audio──▶ bot_speaking
        ▲                     │  ▲                        │                        │
        └──────silence────────┘  └──barge-in── interrupted ◀──caller speech──────┘
        ▲                                                                          │
        └──────────────────────────── reply played ◀──────────────────────────────┘
    any state ──hangup / timeout / max duration──▶ ended
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class CallState(StrEnum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    BOT_SPEAKING = "bot_speaking"
    INTERRUPTED = "interrupted"
    ENDED = "ended"


_ALLOWED: dict[CallState, frozenset[CallState]] = {
    CallState.LISTENING: frozenset({CallState.USER_SPEAKING, CallState.THINKING, CallState.BOT_SPEAKING}),
    CallState.USER_SPEAKING: frozenset({CallState.LISTENING, CallState.THINKING, CallState.USER_SPEAKING}),
    CallState.THINKING: frozenset({CallState.BOT_SPEAKING, CallState.LISTENING, CallState.USER_SPEAKING,
                                   CallState.INTERRUPTED}),
    CallState.BOT_SPEAKING: frozenset({CallState.LISTENING, CallState.INTERRUPTED, CallState.THINKING}),
    CallState.INTERRUPTED: frozenset({CallState.USER_SPEAKING, CallState.LISTENING}),
    CallState.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class StateMachine:
    """Holds the state; refuses transitions the diagram does not have; reports every change."""

    def __init__(self, on_change: Callable[[CallState, CallState], None] | None = None) -> None:
        self.state = CallState.LISTENING
        self._on_change = on_change
        self.history: list[CallState] = [self.state]

    def to(self, new: CallState) -> None:
        if new == self.state:
            return
        if new != CallState.ENDED and new not in _ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state} -> {new}")
        old, self.state = self.state, new
        self.history.append(new)
        if self._on_change:
            self._on_change(old, new)

    @property
    def ended(self) -> bool:
        return self.state == CallState.ENDED
