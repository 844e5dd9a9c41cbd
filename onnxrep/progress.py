"""Feedback while the command line works: a live status line on a terminal, silence elsewhere.

``cli.py`` creates one :class:`Progress` per command and wraps each long step (loading, the
optimization, verification over several seeds, timing, writing) in :meth:`Progress.step`; the
step yields a ``progress(done, total)`` callback that ``compare`` and ``benchmark`` accept, so
the library itself never prints. On a terminal (the stream is a TTY and ``TERM`` is not
``dumb``) a background thread redraws one status line — the step, a bar when the step counts,
the elapsed time — about ten times a second, and erases it when the step ends; a step that ends
within ``delay`` seconds never draws. Elsewhere (pipes, CI logs) nothing is drawn. With
``verbose``, every finished step is logged on its own line with its duration.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

__all__ = ["Progress"]

Callback = Callable[[int, int], None]


class Progress:
    """Status lines for the steps of one command, written to ``stream`` (the CLI's stderr)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        verbose: bool = False,
        delay: float = 0.25,
        interval: float = 0.1,
    ) -> None:
        self.stream = stream
        self.live = _is_terminal(stream) if live is None else live
        self.verbose = verbose
        self.delay = delay
        self.interval = interval
        self.steps: list[tuple[str, float]] = []
        """(label, seconds) of every finished step, in order."""
        utf = "utf" in (getattr(stream, "encoding", "") or "").lower()
        self._bar, self._more = ("█░", "…") if utf else ("#-", "...")

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[Callback]:
        """Run one step under ``label``; the yielded callback reports ``(done, total)``."""
        state = {"done": 0, "total": 0}

        def update(done: int, total: int) -> None:
            state["done"], state["total"] = done, total

        start = time.perf_counter()
        stop = threading.Event()
        drawer = None
        if self.live:
            drawer = threading.Thread(
                target=self._draw, args=(label, state, start, stop), daemon=True
            )
            drawer.start()
        try:
            yield update
        finally:
            stop.set()
            if drawer is not None:
                drawer.join()
            seconds = time.perf_counter() - start
            self.steps.append((label, seconds))
        if self.verbose:
            self._write(f"onnxrep: {label}: {seconds:.2f} s\n")

    def _draw(self, label: str, state: dict[str, int], start: float,
              stop: threading.Event) -> None:
        if stop.wait(self.delay):
            return
        drawn = False
        while True:
            elapsed = time.perf_counter() - start
            done, total = state["done"], state["total"]
            width = shutil.get_terminal_size((80, 24)).columns - 1
            if total > 0:
                filled = round(20 * min(done, total) / total)
                bar = self._bar[0] * filled + self._bar[1] * (20 - filled)
                tail = f" {bar} {done}/{total}  {elapsed:.1f} s"
            else:
                tail = f"  {elapsed:.1f} s"
            room = max(width - len(tail), 10)
            text = label if len(label) <= room else label[: room - len(self._more)] + self._more
            self._write(f"\r{text}{tail}\x1b[K")
            drawn = True
            if stop.wait(self.interval):
                break
        if drawn:
            self._write("\r\x1b[K")

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: stay quiet
            self.stream.write(text)
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False
