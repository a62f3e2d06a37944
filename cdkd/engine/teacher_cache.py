"""The frozen teacher's outputs on disk, shared by every student trained under it (issue 21).

A study trains many students under one frozen teacher: the paper arm, its components, a fixed-tau
arm and the released-code arm of a seed see the same augmented views in the same batches (every
epoch reseeds from ``(seed, epoch)``), and the 32x32 and 64x64 students of a seed see the same
teacher crops. The teacher's outputs for a batch of views are therefore computed once, by the first
student that meets the batch, and read back by the others; the teacher crop is then not rendered
either. On the demo's 2-core CPU the teacher's forward is as costly as the student's whole step.

A batch's file is named by a hash of everything its outputs depend on:

* the teacher (:func:`teacher_identity`): its weights, architecture, input size, ``k``, memory
  format and autocast setting, the torch, OpenCV and NumPy versions, the device (type, CPU
  capability, GPU name), the torch thread count of the process that runs it, and the source of
  the code from a record to the outputs (:data:`CODE_FILES`): float rounding may differ with any
  of these, and a cache must give what the online teacher would give in the run that filled it;
* the views (``TopDownDataset.__getitems__``): the split's images (paths, sizes, modification
  times, in record order), and per sample its record index, the augmentation's center, scale,
  rotation and flip, and the teacher crop size.

So a hit is the same bits the online teacher gave on the same batch of views (tested), whatever
run, arm or resolution filled it; anything else is a miss, and the teacher runs. The files are
written atomically; a file that cannot be read is a miss and is written again.

Every teacher identity has its own folder ``teacher-<hash>`` under the cache folder, and any edit of
the code, the weights or the machine starts a new one, so old folders are never hit again.
``teacher.cache_max_gb`` caps all of them together: a write that would pass the cap first deletes
whole folders of *other* teachers (named ``teacher-`` and 16 hex digits, nothing else), least
recently used first, but never one used in the last :data:`ACTIVE_SECONDS` (another run may be
reading it). A folder's last use is the later of its ``.last_used`` stamp, which every process that
reads or writes there touches at least every :data:`STAMP_EVERY_S`, and its own modification time.
A process claims a folder by renaming it before deleting it, so two processes never delete the same
one, and it counts the folders again before it deletes anything; it deletes nothing when deleting
every unused folder would still not make room (this teacher's own folder fills the cap). A folder
deleted under a run (by another run or by hand) costs that run misses, which run the teacher, and
at most one unwritten batch. When the cap cannot be kept, or with less than 1 GB free on the disk,
or when a write fails, nothing more is written by that process (a warning says so) and training goes
on with the online teacher for the batches not cached. The cap is soft: each process (trainer,
loader workers, other runs) counts the folders every :data:`RESCAN_EVERY` writes and before it
deletes, and adds its own writes in between.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

CACHE_VERSION = 2  # bump when the file layout or what a key covers changes
MIN_FREE_BYTES = 1e9  # never fill the disk beyond this
RESCAN_EVERY = 50  # writes between two counts of the folders (other processes write there too)
ACTIVE_SECONDS = 600.0  # a folder used this recently is in use: never deleted to make room
STAMP = ".last_used"  # touched in a teacher's folder by every process that uses it (least recently used goes first)
STAMP_EVERY_S = 60.0  # a process using a folder touches its stamp at least this often
FOLDER = re.compile(r"teacher-[0-9a-f]{16}")  # the folders this module makes (only these are ever deleted)
PACKAGE = Path(__file__).resolve().parents[1]
# the code between a record and the teacher's outputs: the crops, their augmentation, the models and
# the engine's teacher forward; any edit of these files starts new cache folders
CODE_FILES = ("data/topdown.py", "data/transforms.py", "engine/train.py", "models/*.py")


def code_digest() -> str:
    """A hash of :data:`CODE_FILES` (an edit of the cropping, model or forward code is a new teacher)."""
    h = hashlib.sha256()
    for pattern in CODE_FILES:
        for path in sorted(PACKAGE.glob(pattern)):
            h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def teacher_identity(teacher: nn.Module, channels_last: bool, amp: str, device: torch.device,
                     threads: int | None = None) -> str:
    """A hash of what the teacher's outputs depend on besides its inputs (see the module docstring);
    ``threads``: the torch threads of the process that runs the teacher (default: this one's)."""
    h = hashlib.sha256(f"cdkd teacher outputs v{CACHE_VERSION}".encode())
    for name in ("arch", "input_size", "split_ratio", "num_joints"):
        h.update(f"|{name}={getattr(teacher, name, None)}".encode())
    h.update(f"|{type(teacher).__name__}|channels_last={channels_last}|amp={amp}|{device.type}".encode())
    threads = torch.get_num_threads() if threads is None else int(threads)
    cpu = torch.backends.cpu.get_cpu_capability()  # the kernels oneDNN picks (AVX2, AVX-512, ...)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    h.update(f"|torch {torch.__version__}|threads {threads}|cpu {cpu}|gpu {gpu}".encode())
    h.update(f"|opencv {cv2.__version__}|numpy {np.__version__}|code {code_digest()}".encode())
    for name, value in sorted(teacher.state_dict().items()):
        value = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"|{name}:{value.dtype}:{value.numel()}".encode())
        h.update(value.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """One teacher's outputs per batch of views, one file per batch under ``folder``.

    Loader workers call :meth:`key` and :meth:`load` (the dataset's ``__getitems__``); the training
    process calls :meth:`save` after running the teacher on a batch that missed.

    Args:
        folder: where the files go (created; one folder per teacher identity). Its ``teacher-*``
            siblings are the other teachers' folders, which share the cap.
        identity: :func:`teacher_identity` of the teacher.
        max_bytes: the cap on the bytes of this folder and its ``teacher-*`` siblings together;
            siblings are deleted, least recently used first, to stay under it.
    """

    def __init__(self, folder: str | Path, identity: str, max_bytes: float) -> None:
        self.folder = Path(folder)
        self.identity = identity
        self.max_bytes = float(max_bytes)
        self.used: int | None = None  # bytes in all teachers' folders, counted on the first save
        self.full = False  # a warning was given; nothing more is written
        self.hits = self.misses = self.saved = 0  # in this process
        self.evicted: list[str] = []  # folders this process deleted to make room
        self.stamped = 0.0  # when this process last touched the folder's stamp
        self.stamp()

    def __getstate__(self) -> dict:  # a worker starts its own counts and stamps on its first use
        return {**self.__dict__, "hits": 0, "misses": 0, "saved": 0, "stamped": 0.0}

    def key(self, views: bytes) -> str:
        """The file name of a batch of views (their description as bytes, from the dataset)."""
        return hashlib.sha256(self.identity.encode() + b"|" + views).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The cached outputs ``{'x', 'y', 'feature'}`` of a batch, or None (not cached or unreadable)."""
        path = self.path(key)
        try:
            outputs = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            self.misses += 1
            self.in_use()
            return None
        except Exception as err:  # a truncated or foreign file: a miss, written again by the trainer
            warnings.warn(f"teacher output cache file {path} is unreadable ({type(err).__name__}: {err}); "
                          "running the teacher for this batch", stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        self.in_use()
        return outputs

    def stamp(self) -> None:
        """Mark this teacher's folder as used now (eviction goes by this time; never fails)."""
        self.stamped = time.time()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / STAMP).touch()
        except OSError:
            pass  # a read-only cache still serves hits

    def in_use(self) -> None:
        """Stamp the folder if this process has not done so for :data:`STAMP_EVERY_S`."""
        if time.time() - self.stamped >= STAMP_EVERY_S:
            self.stamp()

    def siblings(self) -> list[Path]:
        """The other teachers' folders next to this one (``teacher-`` and 16 hex digits)."""
        try:
            entries = list(self.folder.parent.iterdir())
        except OSError:
            return []
        return [p for p in entries if FOLDER.fullmatch(p.name) and p != self.folder and p.is_dir()]

    def _count(self) -> int:
        """Bytes of the cached files of every teacher (this folder and its siblings)."""
        return sum(folder_bytes(p) for p in [self.folder, *self.siblings()])

    def _make_room(self, needed: int) -> None:
        """Delete other teachers' folders, least recently used first, until ``needed`` more bytes fit
        under the cap. Counts the folders first (other processes write and delete too); keeps the
        folders used in the last :data:`ACTIVE_SECONDS`, and every folder when deleting all the
        unused ones would not make room."""
        self.used = self._count()
        if self.used + needed <= self.max_bytes:
            return
        now = time.time()
        times = {p: last_used(p) for p in self.siblings()}
        unused = sorted((t, p) for p, t in times.items() if t is not None and now - t >= ACTIVE_SECONDS)
        sizes = {p: folder_bytes(p) for _, p in unused}
        if self.used - sum(sizes.values()) + needed > self.max_bytes:
            return  # this teacher's own files (or folders in use) fill the cap: deleting would not help
        for _, path in unused:
            if self.used + needed <= self.max_bytes:
                return
            used_at = last_used(path)  # again: another run may have started using it since the sort
            if used_at is None or time.time() - used_at < ACTIVE_SECONDS:
                continue
            claimed = path.with_name(f".evicting-{os.getpid()}-{path.name}")
            try:
                os.rename(path, claimed)  # atomic: of two processes evicting it, one wins
            except OSError:
                continue  # taken by another process, or not ours to delete
            shutil.rmtree(claimed, ignore_errors=True)
            self.used -= sizes[path]
            self.evicted.append(path.name)
            warnings.warn(f"teacher output cache: deleted {path} ({sizes[path] / 1e9:.2f} GB, last used "
                          f"{(now - used_at) / 3600:.1f} h ago) to stay under config key "
                          f"'teacher.cache_max_gb' ({self.max_bytes / 1e9:.2f} GB)", stacklevel=4)

    def save(self, key: str, outputs: dict[str, torch.Tensor]) -> bool:
        """Write a batch's outputs (atomically); False when the cache is full or cannot be written."""
        if self.full:
            return False
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.used is None or self.saved % RESCAN_EVERY == 0:
                self.used = self._count()
            self.in_use()
            size = sum(t.numel() * t.element_size() for t in outputs.values())
            if self.used + size > self.max_bytes:
                self._make_room(size)  # counts again
            free = shutil.disk_usage(self.folder).free
            if self.used + size > self.max_bytes:
                self._stop(f"the teachers' folders hold {self.used / 1e9:.2f} GB of at most "
                           f"{self.max_bytes / 1e9:.2f} GB (config key 'teacher.cache_max_gb'), and deleting "
                           f"the other teachers' folders unused for {ACTIVE_SECONDS / 60:.0f} min could not "
                           "make room")
                return False
            if free - size < MIN_FREE_BYTES:
                self._stop(f"only {free / 1e9:.1f} GB is free on its disk (it keeps {MIN_FREE_BYTES / 1e9:.0f} GB "
                           "free; config key 'teacher.cache_max_gb' sets its own cap)")
                return False
            torch.save({name: t.detach().to("cpu") for name, t in outputs.items()}, tmp)
            written = tmp.stat().st_size
            os.replace(tmp, path)
        except Exception as err:  # torch.save reports a full disk or a quota as RuntimeError
            tmp.unlink(missing_ok=True)
            if not self.folder.is_dir():  # deleted under us (by hand, or by another run): this batch only
                self.used = None  # counted again at the next write, which makes the folder again
                return False
            self._stop(f"writing {path} failed ({type(err).__name__}: {err})")
            return False
        self.used += written
        self.saved += 1
        return True

    def _stop(self, why: str) -> None:
        self.full = True
        warnings.warn(f"teacher output cache {self.folder}: {why}; the teacher runs online for the batches "
                      "not cached (config key 'teacher.cache')", stacklevel=3)

    def stats(self) -> dict[str, int]:
        """This process's hits, misses and writes."""
        return {"hits": self.hits, "misses": self.misses, "saved": self.saved}


def folder_bytes(folder: Path) -> int:
    """Bytes of the cached files in one teacher's folder (stamps and unfinished writes left out)."""
    try:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    except OSError:  # deleted meanwhile by another run
        return 0


def last_used(folder: Path) -> float | None:
    """When a teacher's folder was last used: the later of its stamp's time and its own (a write
    changes the folder's); None when the folder is gone."""
    try:
        own = folder.stat().st_mtime
    except OSError:
        return None
    try:
        return max(own, (folder / STAMP).stat().st_mtime)
    except OSError:
        return own


def cache_wanted(setting: str, random_teacher: bool, device: torch.device) -> bool:
    """Whether ``teacher.cache`` asks for the cache: ``disk``, ``none``, or ``auto`` (``disk`` for a
    trained teacher on the CPU, where its forward is as costly as a student step; ``none`` for the
    untrained control, whose outputs no other run shares, and on a GPU, where the forward is cheap
    and a real data set's outputs would fill the disk)."""
    if setting == "auto":
        return not random_teacher and device.type == "cpu"
    return setting == "disk"


def teacher_cache_for(teacher: nn.Module, setting: str, random_teacher: bool, folder: str | Path,
                      max_gb: float, channels_last: bool, amp: str, device: torch.device,
                      threads: int | None = None) -> TeacherCache | None:
    """The cache of ``teacher`` under ``folder`` (in a sub-folder named by its identity), or None
    when ``setting`` (:func:`cache_wanted`) does not ask for one; ``threads``: as in
    :func:`teacher_identity`."""
    if not cache_wanted(setting, random_teacher, device):
        return None
    identity = teacher_identity(teacher, channels_last, amp, device, threads)
    return TeacherCache(Path(folder) / f"teacher-{identity[:16]}", identity, max_gb * 1e9)
