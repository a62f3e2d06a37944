"""How training and evaluation show their progress: ``train.progress`` = bar | lines | none.

* ``bar``: tqdm's bar for where it runs (``tqdm.auto``: a widget in JupyterLab, text in a terminal).
* ``lines``: :class:`LineProgress`, one plain line every 30 s (``$CDKD_PROGRESS_SECONDS``) with the
  steps, the rate and the losses: readable in papermill's ``--log-output``, in an executed
  notebook's stored output and in a log file (a headless kernel never saves a widget's state).
* ``none``: nothing (no bar, no epoch lines).

:func:`loader_batches` iterates a DataLoader apart from the bar and shuts its worker processes down
when the loop ends, also on an error. An iterator left alive (a bar or a traceback still holding
it) is inherited by the next loader's forked workers, which then try to shut down workers that are
not their children ("AssertionError: can only test a child process" in a Jupyter kernel).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm.std import tqdm as std_tqdm

MODES = ("bar", "lines", "none")


class LineProgress(std_tqdm):
    """A tqdm bar printed as one plain line every ``mininterval`` seconds (default 30 s).

    Lines (not carriage-return redraws, not widgets) read well in papermill's ``--log-output``, in an
    executed notebook's stored output and in a log file.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("mininterval", float(os.environ.get("CDKD_PROGRESS_SECONDS", 30)))
        self._lines = kwargs.get("file") or sys.stdout  # where our lines go
        kwargs["file"] = io.StringIO()  # tqdm's own redraws and newlines go nowhere
        kwargs["dynamic_ncols"] = False
        kwargs["ncols"] = 0  # no bar graphic: counts, rate, elapsed, postfix
        kwargs["ascii"] = True
        self._last_line, self._last_n = 0.0, -1
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the bar: lines stay
            return True
        text = msg if msg is not None else self.__str__()
        now = time.monotonic()
        if self.n == self._last_n or (self.n and self.total and self.n < self.total
                                      and now - self._last_line < self.mininterval):
            return True  # nothing new, or too soon: the end of a run is always printed
        self._emit(text, now)
        return True

    def _emit(self, text: str, now: float) -> None:
        self._last_line, self._last_n = now, self.n
        self._lines.write(text.strip() + "\n")
        self._lines.flush()
        self.fp.seek(0)
        self.fp.truncate()

    def close(self) -> None:
        """Print the final state (tqdm's ``leave=False`` would only clear the bar), then close."""
        if not self.disable and self.n != self._last_n:
            self._emit(self.__str__(), time.monotonic())
        super().close()


def progress_bar(mode: str, total: int, desc: str, disable: bool = False) -> std_tqdm:
    """A progress bar of the kind ``mode`` (``train.progress``); use it as a context manager so that
    it is closed however the loop ends."""
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)
    if mode == "lines":
        return LineProgress(total=total, desc=desc, disable=disable, leave=False)
    if mode == "none":
        return std_tqdm(total=total, desc=desc, disable=True)
    raise ValueError(f"config key 'train.progress' is {mode!r}; choose one of {MODES}")


def say(mode: str, text: str) -> None:
    """Print a progress message (an epoch's summary) above the bars, unless ``mode`` is none."""
    if mode != "none":
        std_tqdm.write(text)


@contextlib.contextmanager
def loader_batches(loader, limit: int | None = None) -> Iterator[Iterator]:
    """The batches of ``loader`` (at most ``limit``); on leaving the block, however it is left, the
    loader's iterator shuts its worker processes down (``_shutdown_workers``, what torch's own
    ``__del__`` calls), so no worker outlives the loop."""
    batches = iter(loader)
    try:
        yield itertools.islice(batches, limit)
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent without workers
        if shutdown is not None:
            shutdown()
        del batches
