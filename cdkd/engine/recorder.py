"""Training records: a CSV row per logged step, TensorBoard events, and epoch metrics (JSON lines).

Only rank 0 creates a Recorder with files; other ranks get one with ``enabled=False``.
:func:`read_steps` and :func:`read_epochs` read the two files back (figures, reports, notebooks).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cdkd.engine.run import atomic_write_text


class Recorder:
    """Writes ``steps.csv`` (every term per step), ``epochs.jsonl`` and TensorBoard events.

    Columns of ``steps.csv`` are fixed by the first row written; a resumed run appends to the same
    file (a term absent from a later row is left empty).
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._columns: list[str] | None = None
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is a declared dependency; degrade if absent
                self._writer = None
        steps = self.run_dir / "steps.csv"
        if enabled and steps.exists():
            with open(steps) as f:
                header = f.readline().strip()
            self._columns = header.split(",") if header else None

    def step(self, global_step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": global_step, "epoch": epoch, **{k: float(v) for k, v in values.items()}}
        path = self.run_dir / "steps.csv"
        new = self._columns is None
        if new:
            self._columns = list(row)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"train/{k}", float(v), global_step)

    def epoch(self, epoch: int, values: dict) -> None:
        if not self.enabled:
            return
        # rewritten whole through a temporary file: a kill leaves the old or the new file, never half a line
        path = self.run_dir / "epochs.jsonl"
        before = path.read_text() if path.exists() else ""
        atomic_write_text(path, before + json.dumps({"epoch": epoch, **values}) + "\n")
        if self._writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._writer.add_scalar(f"epoch/{k}", float(v), epoch)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_steps(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Read a run's ``steps.csv`` into float columns (empty cells become NaN).

    Args:
        run_dir: the run folder, or the path of the CSV itself.

    Returns:
        dict column name -> float64 array, one entry per logged step, in file order.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file, line and column of a non-numeric cell.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "steps.csv"
    if not path.exists():
        raise FileNotFoundError(f"no training record at {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns: dict[str, list[float]] = {name: [] for name in (reader.fieldnames or [])}
        for line, row in enumerate(reader, start=2):
            for name, values in columns.items():
                cell = row.get(name)
                if cell is None or cell.strip() == "":
                    values.append(math.nan)
                    continue
                try:
                    values.append(float(cell))
                except ValueError:
                    raise ValueError(f"{path}, line {line}, column '{name}': {cell!r} is not a number") from None
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def read_epochs(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's ``epochs.jsonl``: one dict per finished epoch ('epoch', 'train', 'lr', 'val' when validated).

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming the file and line of a row that is not JSON.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "epochs.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no epoch record at {path}")
    rows = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if text.strip():
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line}: {err}") from None
    return rows


def trim_records(run_dir: Path, start_epoch: int) -> None:
    """Drop the log rows of epochs at or after ``start_epoch``: a run killed mid-epoch logged part of
    an epoch that resume trains again, and each epoch must appear once in ``steps.csv``/``epochs.jsonl``.
    A line cut short by a kill is dropped too; both files are replaced atomically."""
    steps = run_dir / "steps.csv"
    if steps.exists():
        with open(steps, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            col = rows[0].index("epoch")
            kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and _number(r[col]) < start_epoch]
            text = io.StringIO()
            csv.writer(text).writerows(kept)
            atomic_write_text(steps, text.getvalue())
    epochs = run_dir / "epochs.jsonl"
    if epochs.exists():
        lines = [ln for ln in epochs.read_text().splitlines() if _epoch_of(ln) < start_epoch]
        atomic_write_text(epochs, "".join(ln + "\n" for ln in lines))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _epoch_of(line: str) -> float:
    try:
        return float(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return math.inf
