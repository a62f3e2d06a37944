"""Training records: a CSV row per logged step, TensorBoard events, and epoch metrics (JSON lines).

Only rank 0 creates a Recorder with files; other ranks get one with ``enabled=False``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


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
        from cdkd.engine.run import atomic_write_text

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
