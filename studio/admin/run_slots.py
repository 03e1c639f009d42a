"""Long admin runs (Generate, Evaluate): how many run at once, and Cancel — without
Gradio's `cancels=`.

Why not `cancels=`: Gradio 6's `/cancel` ends the event it stops (running, or still in
Gradio's queue) with an empty `process_completed` message (`output: {}`). The browser
hands that message's missing `data` to the run's outputs, the handler throws, and the
status tracker shows "Error" over the run's "Cancelled." (briefly or for good, depending
on whether that message or the `/cancel` + `/reset` replies reach the page first).

So nothing here asks Gradio to cancel. A run registers a cancel flag as its handler
starts and waits for a free slot *inside* its handler (Gradio's queue lets it in at
once, up to the event's `concurrency_limit`); Cancel only sets flags, and every run ends
by returning normally: a running one at its next step, a waiting one at once. A click
first takes a ticket (a `queue=False` event) that the run carries, so a Cancel between
the click and the run's start drops that run too.
"""
from __future__ import annotations

import dataclasses
import threading


@dataclasses.dataclass
class RunSlots:
    """At most `limit` runs at once in the process; per browser session, the cancel flags
    of its runs and the tickets of its clicks whose run has not begun."""

    limit: int
    _cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)
    _busy: int = 0
    _last_ticket: dict[str, int] = dataclasses.field(default_factory=dict)
    _cancelled_upto: dict[str, int] = dataclasses.field(default_factory=dict)
    _pending: dict[str, dict[int, str]] = dataclasses.field(default_factory=dict)  # ticket: kind
    _running: dict[str, dict[threading.Event, str]] = dataclasses.field(default_factory=dict)  # flag: kind

    def click(self, session: str, kind: str = "") -> int:
        """A ticket for the run this click starts (pass it to `begin`)."""
        with self._cond:
            ticket = self._last_ticket.get(session, 0) + 1
            self._last_ticket[session] = ticket
            self._pending.setdefault(session, {})[ticket] = kind
            return ticket

    def begin(self, session: str, ticket, kind: str = "") -> threading.Event | None:
        """The run's cancel flag; None when Cancel came between its click and now (a run
        without a ticket, e.g. 0, is never dropped that way)."""
        with self._cond:
            self._pending.get(session, {}).pop(ticket, None)
            if isinstance(ticket, int) and 0 < ticket <= self._cancelled_upto.get(session, 0):
                return None
            flag = threading.Event()
            self._running.setdefault(session, {})[flag] = kind
            return flag

    def try_slot(self) -> bool:
        """Take a slot if one is free now."""
        with self._cond:
            if self._busy >= self.limit:
                return False
            self._busy += 1
            return True

    def wait_slot(self, flag: threading.Event) -> bool:
        """Wait for a slot and take it (True), or return False once `flag` is set."""
        with self._cond:
            while self._busy >= self.limit and not flag.is_set():
                self._cond.wait()
            if flag.is_set():
                return False
            self._busy += 1
            return True

    def free_slot(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def end(self, session: str, flag: threading.Event) -> None:
        with self._cond:
            runs = self._running.get(session, {})
            kind = runs.pop(flag, None)
            if not runs:
                self._running.pop(session, None)
            # The browser runs one event of a kind per tab at a time (Gradio's trigger_mode
            # "once"): a click of this kind made before now (a double click, a click
            # during the run) was dropped by the page and will never begin. Left pending,
            # it would make an idle Cancel say "Cancelled.".
            pending = self._pending.get(session, {})
            for ticket in [t for t, k in pending.items() if k == kind]:
                del pending[ticket]

    def cancel(self, session: str) -> bool:
        """Set the session's cancel flags and drop its clicks whose run has not begun;
        False when there was nothing to cancel."""
        with self._cond:
            flags = list(self._running.get(session, {}))
            pending = self._pending.pop(session, {})
            self._cancelled_upto[session] = self._last_ticket.get(session, 0)
            for flag in flags:
                flag.set()
            self._cond.notify_all()  # a run waiting for a slot sees its flag
        return bool(flags or pending)
