"""The reproduction's steps as single calls, for the notebooks and ``python -m cdkd reproduce``.

Every step reads and writes files in run folders under one output directory, so that notebooks
pass results to each other through files, never through kernel state, and a step whose run folder
already holds a finished run with the same config is not trained again; a finished run with
another config is an error naming the keys (``force=True`` retrains).

Layout under ``out_dir``::

    runs/teacher/                      the high-resolution teacher
    runs/r{res}_s{seed}_{variant}/     students: baseline, cdkd-paper, cdkd-official, ablations
"""

from __future__ import annotations

from pathlib import Path

from cdkd.config import Config, load_config

# Student arms: config values set on top of the student preset (Table I rows, both fidelities, and the
# control). Plain data: dotted config keys -> values.
VARIANTS: dict[str, dict[str, object]] = {
    "baseline": {"train.mode": "baseline"},
    # the paper's method; the demo preset calibrates alpha and beta (distill.calibrate_share)
    "cdkd-paper": {"train.mode": "distill", "distill.fidelity": "paper"},
    # the released code, with the preset's released loss weights (no calibration: the released
    # feature term is detached and sends no gradient to the student)
    "cdkd-official": {"train.mode": "distill", "distill.fidelity": "official", "distill.calibrate_share": 0.0},
    # control: the paper's method, same calibration rule, but an untrained teacher
    "cdkd-random-teacher": {"train.mode": "distill", "distill.fidelity": "paper", "teacher.random": True},
}

# Ablations of Tables III, V and VI (MPII 64x64 in the paper), as values of a distill run.
ABLATIONS: dict[str, dict[str, object]] = {
    "projector-ensemble": {"train.mode": "distill", "distill.sau": False, "distill.logit": "none"},
    "sape": {"train.mode": "distill", "distill.logit": "none"},
    "necm": {"train.mode": "distill", "distill.feature": "none", "distill.etht": False},
    "cca-etht": {"train.mode": "distill", "distill.feature": "none"},
    "conv-feature": {"train.mode": "distill", "distill.feature": "conv", "distill.logit": "none"},
    "fc-feature": {"train.mode": "distill", "distill.feature": "fc", "distill.logit": "none"},
    "fc-logit": {"train.mode": "distill", "distill.feature": "none", "distill.logit": "fc"},
    "same-class": {"train.mode": "distill", "distill.feature": "none", "distill.logit": "same_class"},  # + k_s, below
    "k1": {"train.mode": "distill", "distill.num_projectors": 1},
    "k5": {"train.mode": "distill", "distill.num_projectors": 5},
    "centred-merge": {"train.mode": "distill", "distill.merge": "centred"},
}


def share_variant(share: float) -> str:
    """The sweep's arm name for a distillation share (0 is the baseline)."""
    return "baseline" if share == 0 else f"share-{share:g}"


def _common(data_root: str | None, device: str, epochs: int | None, workers: int | None) -> dict[str, object]:
    out: dict[str, object] = {"train.device": device}
    if data_root:
        out["data.root"] = str(data_root)
    if epochs:
        out["train.epochs"] = int(epochs)
    if workers is not None:
        out["data.workers"] = int(workers)
    return out


def is_complete(run_dir: str | Path) -> bool:
    """A run is complete when it wrote its final ``metrics.json`` (non-empty, parsable JSON with
    its config) and its ``best.pth`` is there (checkpoints are not committed: a fresh clone
    retrains what it needs)."""
    return finished_config(run_dir) is not None and (Path(run_dir) / "best.pth").exists()


def finished_config(run_dir: str | Path) -> dict | None:
    """The config recorded in a run's ``metrics.json``, or None when the file is missing, empty
    (a kill while it was written) or unparsable."""
    import json

    try:
        record = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return record.get("config") if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


def reuse_or_train(cfg: Config, run_dir: Path, force: bool, unrequested: tuple[str, ...] = ()) -> Path:
    """Reuse a finished run whose recorded config equals ``cfg`` (keys in
    :data:`cdkd.engine.run.NON_RESULT_KEYS`, such as the device and loader workers, aside, and the
    ``unrequested`` keys the caller left to the finished run, e.g. ``train.epochs`` when a notebook
    asks for "the teacher" without giving epochs); train it otherwise (continuing its
    ``last.pth`` when the config matches).

    Raises:
        ConfigError: a finished run with another config is in ``run_dir`` (naming the keys);
            ``force=True`` retrains it (the old files are replaced once the new run has finished).
    """
    from cdkd.config import ConfigError
    from cdkd.engine.run import NON_RESULT_KEYS, config_changes, describe_changes
    from cdkd.engine.train import fit

    if force:
        fit(cfg, run_dir=run_dir, overwrite=True)
        return run_dir
    if is_complete(run_dir):
        changes = config_changes(finished_config(run_dir), cfg, ignore=NON_RESULT_KEYS | set(unrequested))
        if not changes:
            return run_dir
        raise ConfigError(f"{run_dir} holds a finished run with another config ({describe_changes(changes)}); "
                          "pass force=True to retrain it, or use another out_dir")
    fit(cfg, run_dir=run_dir, resume="auto", overwrite=not (Path(run_dir) / "last.pth").exists())
    return run_dir


# Synthetic persons (train, val) of each preset family, when a notebook or ``reproduce`` is given no
# size (0); the demo's are the committed study's.
SYNTHETIC_SIZES: dict[str, tuple[int, int]] = {"demo": (1000, 1000), "tiny": (30, 20)}


def synthetic_size(preset: str, n_train: int = 0, n_val: int = 0) -> tuple[int, int]:
    """(train, val) persons: the given counts, 0 meaning the preset family's (:data:`SYNTHETIC_SIZES`)."""
    train, val = SYNTHETIC_SIZES.get(preset, SYNTHETIC_SIZES["demo"])
    return int(n_train) or train, int(n_val) or val


def synthetic_root(n_train: int, n_val: int, seed: int = 0) -> Path:
    """The default folder of a generated set, one per size and seed (``data/synth-n1000-1000-s0``), so
    that notebooks and ``reproduce`` asking for different sizes never meet in one folder."""
    return Path("data") / f"synth-n{n_train}-{n_val}-s{seed}"


def ensure_data(data_root: str | Path | None, n_train: int = 0, n_val: int = 0, seed: int = 0,
                preset: str = "demo") -> Path:
    """The dataset under ``data_root``: real or synthetic MPII (``data_root/mpii``) when present,
    else the synthetic people are generated there (so every notebook runs on a fresh machine).

    Args:
        data_root: the folder; empty or None: :func:`synthetic_root` of the size, under the
            repository root.
        n_train, n_val: persons to generate; 0: the preset family's (:func:`synthetic_size`).

    Returns:
        The folder (absolute when it was chosen here).
    """
    n_train, n_val = synthetic_size(preset, n_train, n_val)
    if data_root is None or not str(data_root).strip():
        from cdkd.notebook import resolve

        data_root = resolve(synthetic_root(n_train, n_val, seed))
    root = Path(data_root)
    if (root / "mpii" / "annot").is_dir():
        return root
    from cdkd.data.synthetic import ensure_synthetic

    ensure_synthetic(root, train=n_train, val=n_val, seed=seed)
    return root


def teacher_config(preset: str, data_root: str | None = None, epochs: int | None = None, device: str = "auto",
                   seed: int = 0, workers: int | None = None, extra: tuple[str, ...] = ()) -> Config:
    """The teacher's config: ``{preset}_teacher`` with the common values; ``extra``: user overrides
    (``'key=value'``, as on the command line)."""
    values = {**_common(data_root, device, epochs, workers), "train.seed": seed}
    return load_config(f"{preset}_teacher", extra, values=values)


def train_teacher(preset: str, out_dir: str | Path, force: bool = False, **kwargs) -> Path:
    """Train (or reuse) the high-resolution teacher under ``out_dir/runs/teacher``."""
    run_dir = Path(out_dir) / "runs" / "teacher"
    unrequested = ("train.epochs",) if not kwargs.get("epochs") else ()
    return reuse_or_train(teacher_config(preset, **kwargs), run_dir, force, unrequested)


def student_config(preset: str, variant: str, res: int, seed: int, teacher_dir: str | Path,
                   data_root: str | None = None, epochs: int | None = None, device: str = "auto",
                   workers: int | None = None, extra: tuple[str, ...] = ()) -> Config:
    """A student's config at ``res`` x ``res``: ``{preset}_student`` + the variant's values (an arm
    of ``VARIANTS``, an ablation, or a share of the sweep, ``share-S``); ``extra``: user overrides."""
    table = {**VARIANTS, **ABLATIONS}
    if variant.startswith("share-"):
        arm = {**VARIANTS["cdkd-paper"], "distill.calibrate_share": float(variant[len("share-"):])}
    elif variant in table:
        arm = table[variant]
    else:
        raise KeyError(f"unknown variant '{variant}'; variants: {', '.join(table)}, share-S")
    values = {
        **_common(data_root, device, epochs, workers),
        "model.input_size": [res, res],
        "train.seed": seed,
        "teacher.checkpoint": str(Path(teacher_dir) / "best.pth"),
        "train.variant": variant,
        **arm,
    }
    cfg = load_config(f"{preset}_student", extra, values=values)
    if variant == "same-class":  # Table V: a student split ratio that gives the teacher's class count
        from cdkd.distill.baselines import same_class_split_ratio

        k = same_class_split_ratio(cfg.teacher.split_ratio, tuple(cfg.teacher.input_size), tuple(cfg.model.input_size))
        cfg = load_config(f"{preset}_student", extra, values={**values, "model.split_ratio": k})
    return cfg


def train_student(preset: str, variant: str, res: int, seed: int, out_dir: str | Path, force: bool = False,
                  **kwargs) -> Path:
    """Train (or reuse) one student under ``out_dir/runs/r{res}_s{seed}_{variant}``."""
    teacher_dir = kwargs.pop("teacher_dir", Path(out_dir) / "runs" / "teacher")
    run_dir = Path(out_dir) / "runs" / f"r{res}_s{seed}_{variant}"
    unrequested = ("train.epochs",) if not kwargs.get("epochs") else ()
    return reuse_or_train(student_config(preset, variant, res, seed, teacher_dir, **kwargs), run_dir, force,
                          unrequested)


def switch_overrides(sape: bool = True, cca: bool = True, etht: bool = True) -> tuple[str, ...]:
    """The notebook's SAPE / CCA / ETHT switches as config overrides of the CDKD variants."""
    out = []
    if not sape:
        out.append("distill.feature=none")
    if not cca:
        out.append("distill.logit=none")
    if not etht:
        out.append("distill.etht=false")
    return tuple(out)


def train_share_sweep(preset: str, shares, res: int, seed: int, out_dir: str | Path, **kwargs) -> dict[float, Path]:
    """CDKD (paper form) with alpha and beta calibrated so that each distillation term has share S
    of the update, for each S in ``shares`` (S = 0 is the baseline); returns {S: run folder}."""
    return {float(s): train_student(preset, share_variant(float(s)), res, seed, out_dir, **kwargs) for s in shares}


def train_students(preset: str, variants: str | list[str], res: int, seed: int, out_dir: str | Path,
                   sape: bool = True, cca: bool = True, etht: bool = True, force: bool = False,
                   **kwargs) -> dict[str, Path]:
    """Train each variant (``'baseline,cdkd-paper,cdkd-official'``) at ``res``; returns run folders."""
    names = [v.strip() for v in variants.split(",") if v.strip()] if isinstance(variants, str) else list(variants)
    switches = switch_overrides(sape, cca, etht)
    extra = tuple(kwargs.pop("extra", ()))
    runs = {}
    for name in names:
        more = extra + (switches if name != "baseline" else ())
        runs[name] = train_student(preset, name, res, seed, out_dir, force=force, extra=more, **kwargs)
    return runs
