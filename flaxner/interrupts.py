"""SIGINT/SIGTERM during work that keeps nothing yet (loading a model, tracing, XLA compiling): end promptly, with
one line and exit 128 + signal, leaving no partial output.

Python runs a signal handler only between bytecodes of the main thread, and an XLA compile (or a long C++ load)
keeps the main thread out of Python for minutes. So inside `PromptExit` the signal's wake-up byte
(`signal.set_wakeup_fd`, written by CPython's C-level handler at once) wakes a watcher thread, which removes what
the phase wrote (its registered clean-ups), prints the line and leaves with `os._exit`: XLA releases the GIL while
it compiles, so the watcher runs within milliseconds. Work that keeps something (a training step's checkpoint, the
tagged lines) handles signals itself, gracefully, after `disarm`."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_active: list[PromptExit] = []


class Signal(KeyboardInterrupt):
    """A SIGTERM raised as Ctrl-C's KeyboardInterrupt is (by `raise_signal`), with its number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_signal(signum, frame):
    """A signal handler: raise `Signal(signum)` in the main thread."""
    raise Signal(signum)


def on_interrupt(cleanup: Callable[[], str | None]) -> None:
    """Register `cleanup` (returns what it removed, or None) with the innermost armed `PromptExit`; without one,
    nothing happens."""
    if _active:
        _active[-1].cleanups.append(cleanup)


class PromptExit:
    """Context manager (re-enterable): inside, SIGINT/SIGTERM end the process promptly (see the module), and an
    exception leaving it before `disarm` runs the clean-ups too. Signals are left alone off the main thread,
    where Python cannot take them."""

    def __init__(self, command: str, what: str):
        self.command, self.what = command, what
        self.cleanups: list[Callable[[], str | None]] = []
        self._armed = threading.Event()
        self._exiting = threading.Lock()
        self._saved: tuple | None = None

    def __enter__(self) -> PromptExit:
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        handlers = {s: signal.signal(s, self._note) for s in SIGNALS}
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._saved = (handlers, old_fd, r, w)
        self._armed.set()
        _active.append(self)
        threading.Thread(target=self._watch, args=(r,), name="flaxner-prompt-exit", daemon=True).start()
        return self

    def disarm(self) -> None:
        """From now on a signal is the caller's to handle (handlers installed inside stay until `__exit__`)."""
        self._armed.clear()

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._armed.is_set():  # a failed start leaves nothing behind either
            for cleanup in self.cleanups:
                try:
                    cleanup()
                except Exception:  # noqa: BLE001 - the error on its way out is the one to report
                    pass
        if self._saved is None:
            return
        handlers, old_fd, r, w = self._saved
        self._saved = None
        for s, h in handlers.items():
            # None: a handler installed from C (JAX's preemption notifier) that Python cannot put back
            signal.signal(s, signal.SIG_DFL if h is None else h)
        signal.set_wakeup_fd(old_fd)
        self._armed.clear()
        if self in _active:
            _active.remove(self)
        os.close(w)  # the watcher reads end-of-file and returns

    def _note(self, signum, frame) -> None:
        """The Python-level handler: the watcher acts (on the wake-up byte), so nothing to do here but not die."""
        if self._armed.is_set():
            self.exit(signum)

    def _watch(self, r: int) -> None:
        with os.fdopen(r, "rb", buffering=0) as f:
            while data := f.read(1):
                if data[0] in SIGNALS and self._armed.is_set():
                    self.exit(data[0])

    def exit(self, signum: int) -> None:
        """Clean up, say so in one line, end the process with 128 + signum."""
        if not self._exiting.acquire(blocking=False):
            return
        notes = []
        for cleanup in self.cleanups:
            try:
                notes.append(cleanup())
            except Exception as e:  # noqa: BLE001 - leave anyway, saying what could not be removed
                notes.append(f"could not clean up: {e}")
        tail = "".join(f"; {n}" for n in notes if n)
        try:
            sys.stderr.write(f"\nflaxner {self.command}: interrupted by {signal.Signals(signum).name} {self.what}"
                             f"{tail}\n")
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)
