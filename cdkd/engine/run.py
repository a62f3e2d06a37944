"""One call sets up a run: seeds, the run folder, the resolved config and the provenance.

The run folder records everything needed to reproduce it: ``config.yaml`` (resolved), and
``environment.json`` (git commit, whether the tree was dirty, package versions, machine, thread
policy, start time; a resumed run keeps its earlier starts' records under ``earlier_starts``).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from cdkd.config import Config, ConfigError, config_to_dict, load_config, run_name

# Files that make a run folder hold a run: a new run refuses to go there without ``overwrite``.
RUN_FILES = ("metrics.json", "best.pth", "last.pth", "epochs.jsonl")

# Config keys that change where or how fast a run goes, not what it trains (ignored when a run is
# resumed or reused): the device and torch threads (the same computation; float rounding may differ,
# as on another machine: environment.json records each start's thread policy, earlier_starts), the decoded-image cache
# (same crops), the teacher-output cache and where the teacher runs (same bits), progress display,
# logging interval and folder names. Not data.workers: it names the augmentation streams
# (cdkd.engine.train.make_loader).
NON_RESULT_KEYS = frozenset({"name", "train.device", "train.log_every", "train.out_dir",
                             "train.run_name", "train.threads", "data.cache", "data.cache_dir",
                             "data.cache_max_gb", "train.progress",
                             "teacher.cache", "teacher.cache_dir", "teacher.cache_max_gb", "teacher.forward_in"})

PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "pycocotools", "scipy", "cdkd")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: epoch e of a run is the same whether the run went straight
    through or was resumed at e, and each DDP rank draws its own augmentation."""
    return seed * 100_003 + epoch + 7_919 * rank


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_policy(cfg: Config, cores: int | None = None) -> dict:
    """The loader processes and the torch intra-op threads of the training process (``train.threads``).

    ``auto``: the trainer, its loader workers and their threads never ask for more than the cores
    (of one training process: under DDP every rank applies this on its own). The loader runs
    ``min(data.workers, cores - 1)`` worker processes, each with one thread, and the trainer
    ``cores // (1 + loader processes)`` threads (at least one). ``data.workers`` keeps naming the
    augmentation streams: where fewer processes run, :func:`cdkd.engine.train.make_loader` draws
    every batch's augmentations as ``data.workers`` workers would have, so the samples (and the
    run) are the same bits (tests/test_perf_paths.py). More threads than cores is the costly case:
    a busy core makes OpenMP threads wait for each other (8.5x slower steps measured with 2 threads
    and 2 workers on a loaded 2-core machine, issue 21).

    ``all``: one process. The batches are cut in the training process (the same samples, from
    :class:`cdkd.data.topdown.AugmentationStreams`) and torch computes with every core. Where cutting
    a batch is cheap next to a step (decoded images cached, teacher outputs cached or no teacher) this
    is the fastest on a small CPU machine: the step's own ops use both cores of a 2-core machine,
    and no batch crosses between processes (issue 21: up to 1.4x the samples/s of ``auto`` at the
    demo sizes, ``results/bench/train_step.json``). It changes float rounding (a weight gradient
    summed by two threads), so its runs are not the bits of ``auto``'s; on a GPU, or with images
    decoded per sample, ``auto`` is better, and on a machine shared with other work ``all`` collapses
    (its threads wait for each other at every op: 12-27x slower than ``auto`` beside one busy process,
    ``results/bench/train_step_loaded.json``). Refused under torchrun.

    An explicit number: that many trainer threads next to ``data.workers`` worker processes.

    Returns:
        ``{'setting', 'cores', 'workers', 'loader_workers', 'threads', 'processes', 'fits'}``;
        ``workers`` is ``data.workers``, ``loader_workers`` the processes that run, ``fits`` False
        when the trainer's threads plus one per loader process exceed the cores.
    """
    cores = usable_cores() if cores is None else int(cores)
    workers = int(cfg.data.workers)
    setting = str(cfg.train.threads)
    if setting == "auto":
        loader = min(workers, max(cores - 1, 0))
        threads = max(1, cores // (1 + loader))
    elif setting == "all":
        loader, threads = 0, max(1, cores)
    else:
        loader, threads = workers, int(setting)
    return {"setting": setting, "cores": cores, "workers": workers, "loader_workers": loader, "threads": threads,
            "processes": 1 + loader, "fits": threads + loader <= cores}


OUTPUT_FOLDERS = ("results", "data", "runs")


def git_state(path: Path | None = None) -> dict:
    """Commit and dirtiness of the repository holding the package (or ``path``).

    ``dirty`` says whether tracked files other than outputs changed: the committed results, data and
    run folders (``OUTPUT_FOLDERS``) are what a run writes or replaces (``rm -rf results/demo`` before
    a fresh reproduction), not the code that produced them.
    """
    where = str(path or Path(__file__).resolve().parents[2])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                         *(f":(top,exclude){folder}" for folder in OUTPUT_FOLDERS)))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def environment_info() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "git": git_state(),
        "python": sys.version.split()[0],
        "packages": versions,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def setup_run(cfg: Config, out_dir: str | Path | None = None, write: bool = True) -> Path:
    """Seed everything, set the torch threads (:func:`thread_policy`) and create the run folder with
    ``config.yaml`` and ``environment.json`` (which records the thread policy).

    Args:
        cfg: resolved configuration.
        out_dir: the run folder; default ``cfg.train.out_dir / run_name(cfg)``.
        write: False on non-zero ranks (only rank 0 writes).
    Returns:
        The run folder path.
    """
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    threads = thread_policy(cfg)
    torch.set_num_threads(threads["threads"])
    run_dir = Path(out_dir) if out_dir else Path(cfg.train.out_dir) / run_name(cfg)
    if write:
        import yaml

        check_writable(run_dir, "the run folder")
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(portable_config(cfg, run_dir), sort_keys=False))
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        environment = {**environment_info(), "thread_policy": threads, "started": started}
        earlier = _earlier_starts(run_dir)
        if earlier:
            environment["earlier_starts"] = earlier
        atomic_write_text(run_dir / "environment.json", json.dumps(environment, indent=2))
    return run_dir


def _earlier_starts(run_dir: Path) -> list[dict]:
    """What the earlier starts of a run that is being resumed ran under (its ``environment.json``
    records, oldest first); empty for a new run. A run is resumed only from its ``last.pth``, and a
    new run never starts in a folder holding one (:func:`cdkd.engine.train.fit`), so a ``last.pth``
    here means the records belong to this run. A start resumed under another thread policy, machine
    or torch rounds differently from there on: this list keeps that visible."""
    path = run_dir / "environment.json"
    if not (run_dir / "last.pth").exists() or not path.exists():
        return []
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        warnings.warn(f"{path} is unreadable ({err}); the earlier starts of this resumed run are not recorded",
                      stacklevel=3)
        return []
    if not isinstance(previous, dict):
        return []
    earlier = previous.pop("earlier_starts", [])
    return [*(earlier if isinstance(earlier, list) else [earlier]), previous]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: a reader (or a
    kill at any moment) sees the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600: a record gets the user's normal mode
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full and the like: name the file (and the space left), not just the errno
        if err.errno != errno.ENOSPC and err.filename:
            raise
        reason = err.strerror or str(err)
        if err.errno == errno.ENOSPC:
            with contextlib.suppress(OSError):
                reason += f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on its disk)"
        raise OSError(err.errno, reason, str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def default_file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def run_files(run_dir: str | Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``run_dir`` (empty: the folder holds no run)."""
    return [name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict | Config, new: dict | Config, ignore=NON_RESULT_KEYS,
                   run_dir: str | Path | None = None) -> dict[str, list]:
    """Keys whose values differ between two configs, as ``{'train.lr': [old, new]}``.

    Keys in ``ignore`` (default :data:`NON_RESULT_KEYS`) are left out; tuples and lists compare equal.
    With ``run_dir``, ``old`` is that run's record: its paths (:data:`PATH_KEYS`) are resolved from
    the run folder and the repository root, and ``new``'s from the working directory, before they
    are compared (a copied or moved study matches its records).
    """
    if run_dir is not None:
        old, new = resolved_config(old, run_dir), resolved_config(new)
    flat_old = _flatten(old if isinstance(old, dict) else config_to_dict(old))
    flat_new = _flatten(new if isinstance(new, dict) else config_to_dict(new))

    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    ignore = set(ignore)
    share = flat_new.get("distill.calibrate_share") or 0
    if share > 0 and flat_old.get("distill.calibrate_share") == share:
        # alpha and beta of a calibrated run are chosen by the rule (recorded in its config.yaml), not requested
        ignore |= {"distill.alpha", "distill.beta"}
    return {key: [plain(flat_old.get(key)), plain(flat_new.get(key))]
            for key in sorted(set(flat_old) | set(flat_new))
            if key not in ignore and plain(flat_old.get(key)) != plain(flat_new.get(key))}


def describe_changes(changes: dict[str, list]) -> str:
    """``train.lr: 0.001 -> 0.5, train.seed: 0 -> 1`` (the first few keys)."""
    parts = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:6]]
    more = len(changes) - 6
    return ", ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` and check a file can be written there; raise ConfigError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {what} {folder}: {err.strerror or err}") from None
    return folder


# --- one writer per folder ---------------------------------------------------------------------------
LOCK_NAME = ".cdkd.lock"  # inside the folder; beside it LOCK_NAME + ".json" names the holder
HELD_ENV = "CDKD_HELD_FOLDERS"  # folders a parent process holds for its children (reproduce -> notebook kernels)
_held: dict[str, list] = {}  # folder -> [FileLock, depth]: a process may take its own folder again


class FolderInUseError(ConfigError):
    """Another live process writes into the folder; the message names it (pid, command, start time)."""


def _holder_text(folder: Path) -> str:
    try:
        info = json.loads((folder / f"{LOCK_NAME}.json").read_text())
        return f"pid {info['pid']} (`{info['command']}`, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its record is unreadable)"


def _held_by_parent(folder: Path) -> bool:
    return str(folder) in os.environ.get(HELD_ENV, "").split(os.pathsep)


def hold_folder(folder: str | Path, command: str | None = None) -> Path:
    """Make this process the one writer of ``folder`` until :func:`release_folder` or its exit.

    The lock is ``filelock``'s (an OS lock on ``folder/.cdkd.lock``, released by the kernel when the
    process dies, so a dead holder's lock is simply taken over); ``.cdkd.lock.json`` records the
    holder (pid, command, start time) for the refusal message. A process may hold its folder again
    (nested calls), and a folder held by a parent process (``reproduce`` running a notebook) counts
    as held by its children.

    Raises:
        FolderInUseError: another live process holds it, naming that process.
    """
    from filelock import FileLock, Timeout

    folder = check_writable(folder, "the folder").resolve()
    key = str(folder)
    if key in _held:
        _held[key][1] += 1
        return folder
    if _held_by_parent(folder):
        return folder
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderInUseError(f"{folder} is being written by {_holder_text(folder)}; one writer per folder: "
                               "wait for it to end or stop it (a notebook holds its out_dir until its kernel is "
                               "shut down), or use another output folder") from None
    _held[key] = [lock, 1]
    record = {"pid": os.getpid(), "command": command or shlex.join(sys.argv),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(folder / f"{LOCK_NAME}.json", json.dumps(record) + "\n")
    return folder


def release_folder(folder: str | Path) -> None:
    """Undo one :func:`hold_folder` of this process (the last one frees the folder)."""
    key = str(Path(folder).resolve())
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        with contextlib.suppress(OSError):
            (Path(key) / f"{LOCK_NAME}.json").unlink()
        entry[0].release()


@contextlib.contextmanager
def holding(folder: str | Path, command: str | None = None):
    """:func:`hold_folder` for a block."""
    held = hold_folder(folder, command)
    try:
        yield held
    finally:
        release_folder(held)


# --- portable records ----------------------------------------------------------------------------
# Config keys that hold paths. Records store them relative (see :func:`portable_config`), so that a
# copied or moved study, or a moved checkout, still matches its records.
PATH_KEYS = ("data.root", "teacher.checkpoint", "model.pretrained")


def _repo_root() -> Path:
    """The checkout this package runs from (``$CDKD_ROOT`` when set, as for the notebooks)."""
    return Path(os.environ.get("CDKD_ROOT") or Path(__file__).resolve().parents[2]).expanduser().resolve()


def portable_path(value: str, run_dir: str | Path) -> str:
    """``value`` as a record stores it: ``./x`` or ``../x`` relative to the run folder when it lies
    in the run folder or beside it (a study's teacher), else relative to the repository root when it
    lies there (``data/synth/mpii``), else absolute. Empty stays empty."""
    if not value:
        return value
    path = Path(value).expanduser().resolve()
    run_dir = Path(run_dir).resolve()
    root = _repo_root().resolve()
    study = run_dir.parent
    if path.is_relative_to(study) and not root.is_relative_to(study):
        rel = os.path.relpath(path, run_dir)
        return rel if rel.startswith("..") else f"./{rel}"
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def resolve_recorded_path(value: str, run_dir: str | Path) -> str:
    """The absolute path of a recorded ``value`` (:func:`portable_path` reversed)."""
    if not value:
        return value
    if value.startswith(("./", "../")):
        return str((Path(run_dir) / value).resolve())
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (_repo_root() / path).resolve())


def _map_paths(config: dict, fn) -> dict:
    out = json.loads(json.dumps(config))
    for key in PATH_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section), dict) and isinstance(out[section].get(name), str):
            out[section][name] = fn(out[section][name])
    return out


def portable_config(config: dict | Config, run_dir: str | Path) -> dict:
    """A config dict for a run's records (config.yaml, metrics.json, checkpoints) with its paths
    made relative (:func:`portable_path`)."""
    config = config if isinstance(config, dict) else config_to_dict(config)
    return _map_paths(config, lambda v: portable_path(v, run_dir))


def load_run_config(run_dir: str | Path) -> Config:
    """A finished or running run's ``config.yaml`` with its recorded paths made absolute
    (:func:`resolve_recorded_path`), so that it loads its data and teacher from any working
    directory (a JupyterLab kernel runs in ``notebooks/``) and from a copied or moved study."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: the run's config cannot be read ({e})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the run's config is not a mapping")
    return load_config(resolved_config(values, run_dir))


def resolved_config(config: dict | Config, run_dir: str | Path | None = None) -> dict:
    """A config dict with its path keys absolute: a record's (``run_dir`` given) resolved as
    :func:`resolve_recorded_path`, a live one's relative paths taken from the working directory."""
    config = config if isinstance(config, dict) else config_to_dict(config)
    if run_dir is None:
        return _map_paths(config, lambda v: str(Path(v).expanduser().resolve()) if v else v)
    return _map_paths(config, lambda v: resolve_recorded_path(v, run_dir))
