"""The reproduction's steps as single calls, for the notebooks and ``python -m cdkd reproduce``.

Every step reads and writes files in run folders under one output directory, so that notebooks
pass results to each other through files, never through kernel state, and a step whose run folder
already holds a finished run with the same config is not trained again; a finished run with
another config is an error naming the keys (``force=True`` retrains). :func:`check_parameters`
checks a notebook's or ``reproduce``'s parameters before any data is generated or model trained, and
makes the calling process the one writer of the output folder.

Layout under ``out_dir``::

    runs/teacher/                      the high-resolution teacher
    runs/r{res}_s{seed}_{variant}/     students: baseline, cdkd-paper, the controls, cdkd-official, ablations
    curve/r{res}_s{seed}_{variant}_e{E}/  the training-length curve (:func:`train_curve`)

The controls, the components and the fixed-tau arm (``SHARED_WEIGHTS``) train with the alpha and
beta that the paper arm of their seed and resolution calibrated (:func:`paper_weights`).
"""

from __future__ import annotations

from pathlib import Path

from cdkd.config import Config, ConfigError, load_config

# Student arms: config values set on top of the student preset (Table I rows, both fidelities, and the
# control). Plain data: dotted config keys -> values.
VARIANTS: dict[str, dict[str, object]] = {
    "baseline": {"train.mode": "baseline"},
    # the paper's method; the demo preset calibrates alpha and beta (distill.calibrate_share)
    "cdkd-paper": {"train.mode": "distill", "distill.fidelity": "paper"},
    # the released code, with the preset's released loss weights (no calibration: the released
    # feature term is detached and sends no gradient to the student)
    "cdkd-official": {"train.mode": "distill", "distill.fidelity": "official", "distill.calibrate_share": 0.0},
    # control A: the paper's method under an untrained teacher (alpha, beta: the paper arm's, below)
    "cdkd-random-teacher": {"train.mode": "distill", "distill.fidelity": "paper", "teacher.random": True},
    # control B: the paper's method, each crop distilling from another crop's teacher output in the batch
    # (the trained teacher's statistics, no knowledge of this image)
    "cdkd-shuffled-teacher": {"train.mode": "distill", "distill.fidelity": "paper", "teacher.shuffle": True},
    # the paper's method with a fixed, lower temperature (no ETHT): tests whether tau ~ 15.6 flattens the
    # merged teacher target towards the uniform distribution (see the target entropy in the summary). Its
    # beta is the paper arm's, calibrated at tau ~ 15.6, so the logit term's share differs (measured, shown)
    "cdkd-paper-tau4": {"train.mode": "distill", "distill.fidelity": "paper", "distill.etht": False, "distill.tau": 4.0},
}

# Arms that take alpha and beta from the finished paper arm (``cdkd-paper``) of the same seed and
# resolution instead of calibrating their own: one calibration per seed, shared and fixed before their
# results, so that these arms differ from the paper arm only in what their name says (the teacher, the
# temperature, or a missing term), not in the weight of the distillation terms.
SHARED_WEIGHTS = frozenset({"cdkd-random-teacher", "cdkd-shuffled-teacher", "cdkd-paper-tau4", "sape", "cca-etht"})
WEIGHTS_FROM = "cdkd-paper"

# Arms of the training-length curve (:func:`train_curve`).
CURVE_VARIANTS = ("baseline", "cdkd-paper")

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
    :data:`cdkd.engine.run.NON_RESULT_KEYS`, such as the device and torch threads, aside, and the
    ``unrequested`` keys the caller left to the finished run, e.g. ``train.epochs`` when a notebook
    asks for "the teacher" without giving epochs); train it otherwise (continuing its
    ``last.pth`` when the config matches).

    Raises:
        ConfigError: a finished run with another config is in ``run_dir`` (naming the keys);
            ``force=True`` retrains it (the old files are replaced once the new run has finished).
    """
    from cdkd.engine.run import NON_RESULT_KEYS, config_changes, describe_changes
    from cdkd.engine.train import fit

    if force:
        fit(cfg, run_dir=run_dir, overwrite=True)
        return run_dir
    if is_complete(run_dir):
        changes = config_changes(finished_config(run_dir), cfg, ignore=NON_RESULT_KEYS | set(unrequested),
                                 run_dir=run_dir)
        if not changes:
            return run_dir
        raise ConfigError(f"{run_dir} holds a finished run with another config ({describe_changes(changes)}); "
                          "keep the values it was trained with, use another output folder (--out, out_dir), "
                          f"or delete {run_dir} to retrain it")
    fit(cfg, run_dir=run_dir, resume="auto", overwrite=not (Path(run_dir) / "last.pth").exists())
    return run_dir


def _names(value, what: str, table: dict) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value or ())
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"unknown {what} '{unknown[0]}'; {what}s: {', '.join(table)}")
    return names


def parse_shares(shares) -> list[float]:
    """The sweep's shares from ``'0,0.15,0.3'`` (or a list); a bad number is a ConfigError naming it."""
    import math

    out = []
    for item in shares.split(",") if isinstance(shares, str) else (shares or ()):
        if isinstance(item, str) and not item.strip():
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"share {item!r} is not a number (shares are comma-separated, e.g. 0,0.15,0.3)") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"share {item!r} must be a finite number >= 0")
        out.append(value)
    return out


def check_parameters(preset: str, out_dir: str | Path, seed: int = 0, res: int | None = None,
                     variants=None, shares=None, ablations=None, device: str = "auto", epochs: int = 0,
                     hold: bool = True) -> Path:
    """Check a notebook's (or ``reproduce``'s) parameters before any data is generated or model
    trained, then (``hold``) make this process the one writer of ``out_dir`` (absolute, as
    :func:`cdkd.notebook.folders` gives it), until the process (a notebook's kernel) ends; see
    :func:`cdkd.engine.run.hold_folder`.

    Every student config the parameters ask for is built and validated as training would build it
    (preset, ``res`` against the teacher's resolution, the device), so a bad value fails at once.

    Raises:
        ConfigError: naming the parameter and its value.
    """
    from cdkd.engine.run import hold_folder
    from cdkd.engine.train import check_device

    def whole(name, value, low):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"parameter '{name}' is {value!r}; it must be a whole number >= {low}")

    whole("seed", seed, 0)
    whole("epochs", epochs or 0, 0)
    if res is not None:
        whole("res", res, 1)
    try:
        teacher = teacher_config(preset, device=device, seed=seed)
    except ConfigError as err:
        raise ConfigError(f"parameter 'preset' ({preset!r}) or 'device' ({device!r}): {err}") from None
    check_device(teacher)
    names = _names(variants, "variant", {**VARIANTS, **ABLATIONS})  # any arm student_config builds
    names += _names(ablations, "ablation", ABLATIONS)
    values = parse_shares(shares)
    names += [share_variant(v) for v in values]
    teacher_dir = Path(out_dir) / "runs" / "teacher"
    if not names and res is not None:
        names = ["cdkd-paper"]  # a resolution alone is checked against the teacher's as a distilled student
    for name in dict.fromkeys(names):
        try:
            cfg = student_config(preset, name, res or teacher.model.input_size[0], seed, teacher_dir, device=device)
        except ConfigError as err:
            raise ConfigError(f"parameters res={res}, variant '{name}': {err}") from None
        if name.startswith("share-"):
            d = cfg.distill
            active = (d.feature != "none") + (d.logit != "none")
            if not 0 < cfg.distill.calibrate_share < 1 / max(active, 1):
                raise ConfigError(f"share {cfg.distill.calibrate_share:g} is out of range: with {active} distillation "
                                  f"terms each term's share must lie in (0, {1 / max(active, 1):g}); 0 is the baseline")
    out = Path(out_dir)
    if hold:
        hold_folder(out)
    return out


# Synthetic persons (train, val) of each preset family, when a notebook or ``reproduce`` is given no
# size (0): the demo's are the committed study's; tiny trains on 24 samples (max_samples) anyway.
SYNTHETIC_SIZES: dict[str, tuple[int, int]] = {"demo": (4000, 1000), "tiny": (30, 20)}


def synthetic_size(preset: str, n_train: int = 0, n_val: int = 0) -> tuple[int, int]:
    """(train, val) persons: the given counts, 0 meaning the preset family's (:data:`SYNTHETIC_SIZES`)."""
    train, val = SYNTHETIC_SIZES.get(preset, SYNTHETIC_SIZES["demo"])
    return int(n_train) or train, int(n_val) or val


def synthetic_root(n_train: int, n_val: int, seed: int = 0) -> Path:
    """The default folder of a generated set, one per size and seed (``data/synth-n4000-1000-s0``), so
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
                   workers: int | None = None, extra: tuple[str, ...] = (),
                   fixed: dict[str, object] | None = None) -> Config:
    """A student's config at ``res`` x ``res``: ``{preset}_student`` + the variant's values (an arm
    of ``VARIANTS``, an ablation, or a share of the sweep, ``share-S``); ``extra``: user overrides;
    ``fixed``: dotted keys set last, over the user's overrides too (the paper arm's alpha and beta of
    :func:`paper_weights`, the curve's schedule)."""
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
    if fixed:
        from cdkd.config import config_to_dict

        cfg = load_config(config_to_dict(cfg), values=fixed)
    return cfg


def train_student(preset: str, variant: str, res: int, seed: int, out_dir: str | Path, force: bool = False,
                  **kwargs) -> Path:
    """Train (or reuse) one student under ``out_dir/runs/r{res}_s{seed}_{variant}``."""
    teacher_dir = kwargs.pop("teacher_dir", Path(out_dir) / "runs" / "teacher")
    run_dir = Path(out_dir) / "runs" / f"r{res}_s{seed}_{variant}"
    unrequested = ("train.epochs",) if not kwargs.get("epochs") else ()
    if variant in SHARED_WEIGHTS:  # the paper arm of this seed first: its calibrated alpha and beta
        weights = paper_weights(preset, res, seed, out_dir, teacher_dir=teacher_dir, **kwargs)
        kwargs["fixed"] = {**(kwargs.get("fixed") or {}), **weights}
    return reuse_or_train(student_config(preset, variant, res, seed, teacher_dir, **kwargs), run_dir, force,
                          unrequested)


def paper_weights(preset: str, res: int, seed: int, out_dir: str | Path, **kwargs) -> dict[str, object]:
    """alpha and beta of the paper arm (``WEIGHTS_FROM``) of this seed and resolution, trained first
    if it has not finished, as fixed values for the arms of ``SHARED_WEIGHTS``:
    ``{'distill.alpha': a, 'distill.beta': b, 'distill.calibrate_share': 0.0}``. ``kwargs`` are
    :func:`train_student`'s (the same epochs, data and overrides as the arm that asks)."""
    paper_dir = train_student(preset, WEIGHTS_FROM, res, seed, out_dir, **kwargs)
    distill = (finished_config(paper_dir) or {}).get("distill") or {}
    if "alpha" not in distill or "beta" not in distill:
        raise FileNotFoundError(f"{paper_dir}/metrics.json records no distill.alpha/beta to share")
    return {"distill.alpha": float(distill["alpha"]), "distill.beta": float(distill["beta"]),
            "distill.calibrate_share": 0.0}


def study_models(study: str | Path, res: int, seed: int, variant: str, out_dir: str | Path | None = None
                 ) -> tuple[Path, Path]:
    """(teacher run, student run) of a finished study to look inside without training, e.g. the
    committed ``results/demo`` right after a clone: ``study/runs/teacher`` and
    ``study/runs/r{res}_s{seed}_{variant}``, each with its ``metrics.json`` and ``best.pth``.

    Raises:
        ConfigError: ``out_dir`` is the study itself (figures would rewrite its evidence).
        FileNotFoundError: naming the run folder and what it lacks, and the runs that are there.
    """
    study = Path(study)
    if out_dir is not None and Path(out_dir).resolve() == study.resolve():
        raise ConfigError(f"parameter 'out_dir' is the study being explored ({study}): its figures would be "
                          "rewritten; leave out_dir empty (runs/<preset>) or name another folder")
    found = []
    for name in ("teacher", f"r{res}_s{seed}_{variant}"):
        run = study / "runs" / name
        if not is_complete(run):
            have = sorted(p.parent.name for p in (study / "runs").glob("*/best.pth"))
            lacks = "best.pth" if finished_config(run) is not None else "metrics.json (not a finished run)"
            raise FileNotFoundError(f"{run}: {lacks} missing, so it cannot be explored without training; runs of "
                                    f"{study} with a checkpoint: {', '.join(have) or 'none'}")
        found.append(run)
    return found[0], found[1]


def train_curve(preset: str, lengths, res: int, seed: int, out_dir: str | Path, variants=CURVE_VARIANTS,
                force: bool = False, **kwargs) -> dict[int, dict[str, Path]]:
    """PCKh against training length: each arm of ``variants`` trained for each number of epochs in
    ``lengths`` (one seed), the LR dropping for the last epoch as in the demo preset
    (``train.lr_steps = [E - 1]``), under the study's teacher (``out_dir/runs/teacher``).

    A length whose config equals a finished study run (``out_dir/runs/r{res}_s{seed}_{variant}``)
    reuses that run; the others train under ``out_dir/curve/r{res}_s{seed}_{variant}_e{E}``. Returns
    ``{E: {variant: run folder}}``; nothing for an empty ``lengths``."""
    from cdkd.engine.run import NON_RESULT_KEYS, config_changes

    out_dir = Path(out_dir)
    teacher_dir = kwargs.pop("teacher_dir", out_dir / "runs" / "teacher")
    kwargs.pop("epochs", None)
    curve: dict[int, dict[str, Path]] = {}
    for epochs in sorted({int(e) for e in lengths}):
        fixed = {"train.lr_steps": [max(epochs - 1, 1)]}
        for variant in variants:
            cfg = student_config(preset, variant, res, seed, teacher_dir, epochs=epochs, fixed=fixed, **kwargs)
            study = out_dir / "runs" / f"r{res}_s{seed}_{variant}"
            # the record's paths resolved from its folder (``../teacher/best.pth``, ``data/...``) before comparing
            if is_complete(study) and not config_changes(finished_config(study), cfg, ignore=NON_RESULT_KEYS,
                                                         run_dir=study):
                curve.setdefault(epochs, {})[variant] = study
                continue
            run_dir = out_dir / "curve" / f"r{res}_s{seed}_{variant}_e{epochs}"
            curve.setdefault(epochs, {})[variant] = reuse_or_train(cfg, run_dir, force)
    return curve


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
