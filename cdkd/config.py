"""Run configuration: nested dataclasses whose defaults are the paper's main setting.

The defaults describe the paper's headline MPII experiment (Table I, 64x64 row): an HRNet-W32
SimCC student at 64x64 with split ratio k=3, distilled from a frozen HRNet-W32 teacher at
256x256 with SAPE + CCA + ETHT. A preset (``cdkd/presets/NAME.yaml``) or a user YAML holds only
what differs from these defaults; ``--set section.key=value`` overrides single values.
Unknown keys are errors that name the key, so a typo can never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ModelConfig:
    """The model being trained (the student in ``distill`` mode, the teacher in ``teacher`` mode)."""

    arch: str = "hrnet_w32"
    input_size: tuple[int, int] = (64, 64)  # (H, W) of the crop fed to the model
    split_ratio: float = 3.0  # SimCC k: classes per pixel (SIMDR_SPLIT_RATIO)
    pretrained: str = ""  # optional ImageNet backbone file (hrnet_w32-36af842e.pth, ...)


@dataclass
class TeacherConfig:
    """The frozen high-resolution teacher used in ``distill`` mode."""

    arch: str = "hrnet_w32"
    input_size: tuple[int, int] = (256, 256)
    split_ratio: float = 3.0
    checkpoint: str = ""  # cdkd checkpoint or official state dict of the trained teacher
    random: bool = False  # True: an untrained teacher of this arch (the control arm; checkpoint ignored)
    shuffle: bool = False  # True: each crop distils from another crop's output in the batch (rolled by one; control B)
    # outputs computed once per batch of views and read back by every later student (same bits,
    # cdkd.engine.teacher_cache): auto = disk for a trained teacher on the CPU, else none | disk | none
    cache: str = "auto"
    cache_dir: str = ""  # "" = DATA_ROOT/.cache (one sub-folder per teacher)
    # cap on all teachers' folders under cache_dir together: other teachers' folders (old code, other
    # weights) are deleted to make room, least recently used first; above it nothing more is written
    cache_max_gb: float = 32.0
    # where the teacher runs: auto = in the loader workers (beside the student's step, same bits) on
    # a CPU whose trainer runs one thread next to loader processes, else in the trainer | trainer
    forward_in: str = "auto"


@dataclass
class DataConfig:
    """Dataset, person boxes and training augmentation (official SimCC/HRNet values)."""

    dataset: str = "mpii"  # coco | mpii (the synthetic set is written in both formats)
    root: str = "data/synth/mpii"
    train_set: str = "train"
    val_set: str = "valid"
    use_gt_bbox: bool = True  # COCO val: ground-truth boxes, or detections from det_file
    det_file: str = ""  # COCO_val2017_detections_AP_H_56_person.json style
    det_score_thr: float = 0.0
    bbox_enlarge: float = 1.25  # COCO box -> scale enlargement
    flip: bool = True
    scale_factor: float = 0.25
    rotation_factor: float = 30.0
    rot_prob: float = 0.6
    half_body_prob: float = 0.0
    num_joints_half_body: int = 8
    on_bad: str = "error"  # error | skip: what a bad image or annotation does
    workers: int = 2  # loader workers, and the augmentation streams (same samples however many processes run)
    cache: str = "decoded"  # decoded: images decoded once into a file under cache_dir (same crops, faster) | none
    cache_dir: str = ""  # where the decoded images go; "" = ROOT/.cache (data/synth/mpii/.cache for the demo)
    cache_max_gb: float = 16.0  # a larger split is not cached (a warning says so)
    max_samples: int = 0  # >0 keeps only the first N persons of each split (tiny runs)


@dataclass
class LossConfig:
    """The SimCC task loss L_ori (Eq. 8) in its two released variants."""

    kind: str = "mean"  # mean: MPII NMTNORMCritierion; sum: COCO NMTCritierion
    label_smoothing: float = 0.2
    weight: float = 1.0  # multiplies L_ori (the released CDKD code uses 1000)


@dataclass
class DistillConfig:
    """CDKD: SAPE (Eq. 1-5), CCA (Eq. 6-7), ETHT (Eq. 9-12), and the ablation baselines."""

    fidelity: str = "paper"  # paper | official (PAPER_NOTES items 1-6)
    feature: str = "sape"  # sape | conv | fc | none (Table V feature alignment)
    logit: str = "cca"  # cca | fc | same_class | none (Table V logit alignment)
    alpha: float = 1.0  # weight of L_fea (Eq. 8)
    beta: float = 1.0  # weight of L_logit (Eq. 8)
    num_projectors: int = 3  # K (Table VI)
    projector: str = "light"  # light: per-joint plane map; full: one Linear over J*h*w (released)
    sau: bool = True  # scale-adaptive unit; False averages the projectors (plain ensemble)
    sau_kernels: tuple[int, ...] = (3, 5, 7, 7)  # Table VII
    sau_hidden: int = 32
    etht: bool = True  # learnable temperature; False is a fixed tau (NECM in Table III)
    tau: float = 1.0  # fixed temperature when etht is False
    tau_min: float = 1.0
    tau_range: float = 20.0
    learn: tuple[str, ...] = ("tau",)  # Table VIII: tau | tau,alpha | tau,alpha,beta
    xi_epochs: int = 10  # ETHT: xi rises 0 -> xi_max (cosine) over these epochs; 0: reaching xi_max at the last epoch
    xi_max: float = 1.0
    merge: str = "integer"  # integer: Eq. 6 (m adjacent bins); overlap / centred: any ratio (centred: bias-free)
    calibrate_share: float = 0.0  # >0: set alpha, beta before training so each term has this share of the update
    calibrate_batches: int = 4  # training batches the calibration averages over


@dataclass
class TrainConfig:
    mode: str = "distill"  # teacher | baseline | distill
    epochs: int = 210
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_steps: tuple[int, ...] = (170, 200)
    lr_factor: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    # auto: min(data.workers, cores - 1) loader processes, the trainer the other cores | all: batches cut in the
    # trainer, every core computes it (fastest on a small CPU with cached data that nothing else uses; other
    # rounding) | a number
    threads: str = "auto"
    deterministic: bool = True
    max_steps_per_epoch: int = 0  # >0 caps each epoch (tiny runs and tests)
    log_every: int = 10
    log_shares: bool = True  # steps.csv: each Eq. 8 term's share of the update on logged steps (2 extra backwards)
    # how progress shows (not a result): bar (tqdm.auto: a widget in JupyterLab, text in a terminal) | lines (a line
    # every 30 s: papermill --log-output, log files) | none. cdkd.engine.progress
    progress: str = "bar"
    val_every: int = 1
    out_dir: str = "runs"
    run_name: str = ""  # default: derived from mode, archs, sizes, dataset and seed
    variant: str = ""  # the arm this run belongs to (baseline, cdkd-paper, ...), recorded in metrics.json


@dataclass
class EvalConfig:
    flip_test: bool = True
    flip_shift: str = "exact"  # exact: k-1 bins for any k; official: one bin (exact only for k=2)
    batch_size: int = 64
    oks_thr: float = 0.9  # OKS-NMS threshold
    in_vis_thr: float = 0.02  # keypoint confidence counted in rescoring (SimCC IN_VIS_THRE)
    pck_threshold: float = 0.5
    mean_at_01: str = "simcc"  # Mean@0.1 threshold: simcc = 0.10 (SimCC/CDKD releases, Table I); hrnet = 0.11


@dataclass
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names the key."""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise naming ``key``."""
    origin = get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        args = get_args(hint)
        item = args[0]
        return tuple(_coerce(v, item, key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            number = hint(value) if not isinstance(value, str) else hint(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {value!r}") from None
        if hint is int and float(value) != number:
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return number
    if hint is str:
        return "" if value is None else str(value)
    return value


def _update(obj: Any, values: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' is a section; give it a mapping")
            _update(current, value, prefix=f"{path}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def config_from_dict(values: dict) -> Config:
    """Build a Config from a (possibly partial) nested dict; unknown keys raise ConfigError."""
    cfg = Config()
    _update(cfg, values or {})
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_override(text: str) -> dict:
    """``'train.lr=0.01'`` -> ``{'train': {'lr': '0.01'}}`` (values typed later by the dataclass)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dotted(values: dict[str, Any]) -> dict:
    """``{'train.lr': 0.01}`` -> ``{'train': {'lr': 0.01}}`` (values kept as given, typed later)."""
    out: dict = {}
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(name_or_path: str | Path | dict | None = None, overrides: list[str] | tuple = (),
                values: dict[str, Any] | None = None) -> Config:
    """Load a preset by name (``mpii_w32_64_distill``) or a YAML file, then apply values and overrides.

    Args:
        name_or_path: preset name from :func:`list_presets`, a YAML path, a config as a nested dict
            (e.g. the one a checkpoint records), or None for the defaults.
        overrides: ``section.key=value`` strings (the command line's ``--set``), applied last, in order.
        values: ``{'section.key': value}`` set before the overrides (programmatic callers).
    """
    merged: dict = {}
    if isinstance(name_or_path, dict):  # a recorded config (a checkpoint's, a metrics.json's)
        merged = _merge({}, name_or_path)
        name_or_path = None
    if name_or_path:
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESET_DIR / f"{name_or_path}.yaml"
            if not path.exists():
                raise ConfigError(
                    f"no preset named '{name_or_path}'; presets: {', '.join(list_presets())}"
                )
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            merged = yaml.safe_load(f) or {}
        if not isinstance(merged, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        merged.setdefault("name", path.stem)
    merged = _merge(merged, dotted(values or {}))
    for text in overrides:
        merged = _merge(merged, parse_override(text))
    try:
        cfg = config_from_dict(merged)
    except ConfigError as err:
        where = f" in {name_or_path}" if name_or_path else ""
        raise ConfigError(f"{err}{where}") from None
    validate(cfg)
    return cfg


# the names of cdkd.models.ARCHS (config sits below the models; tests/test_layers.py checks they agree)
ARCH_NAMES = ("hrnet_w32", "hrnet_w48", "hrnet_w16_small", "hrnet_w8_tiny", "resnet18", "resnet34", "resnet50")

_CHOICES = {
    "model.arch": ARCH_NAMES,
    "teacher.arch": ARCH_NAMES,
    "data.dataset": ("coco", "mpii"),
    "data.on_bad": ("error", "skip"),
    "data.cache": ("none", "decoded"),
    "teacher.cache": ("auto", "disk", "none"),
    "teacher.forward_in": ("auto", "trainer"),
    "loss.kind": ("mean", "sum"),
    "distill.fidelity": ("paper", "official"),
    "distill.feature": ("sape", "conv", "fc", "none"),
    "distill.logit": ("cca", "fc", "same_class", "none"),
    "distill.projector": ("light", "full"),
    "distill.merge": ("integer", "overlap", "centred"),
    "train.mode": ("teacher", "baseline", "distill"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.progress": ("bar", "lines", "none"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "eval.flip_shift": ("exact", "official"),
    "eval.mean_at_01": ("simcc", "hrnet"),
}


def validate(cfg: Config) -> None:
    """Check choices and value ranges; raise ConfigError naming the key."""
    d = config_to_dict(cfg)
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        if d[section][name] not in choices:
            raise ConfigError(f"config key '{key}' is {d[section][name]!r}; choose one of {choices}")
    for section in ("model", "teacher"):
        size = d[section]["input_size"]
        if len(size) != 2 or min(size) <= 0 or any(s % 32 for s in size):
            raise ConfigError(f"config key '{section}.input_size' must be (H, W), positive multiples of 32 "
                              f"(the backbones downsample by 32); got {size}")
        if d[section]["split_ratio"] <= 0:
            raise ConfigError(f"config key '{section}.split_ratio' must be positive")
    for t in cfg.distill.learn:
        if t not in ("tau", "alpha", "beta"):
            raise ConfigError(f"config key 'distill.learn' has {t!r}; allowed: tau, alpha, beta")
    if cfg.train.epochs <= 0 or cfg.train.batch_size <= 0:
        raise ConfigError("config keys 'train.epochs' and 'train.batch_size' must be positive")
    if not math.isfinite(cfg.distill.calibrate_share):
        raise ConfigError(f"config key 'distill.calibrate_share' is {cfg.distill.calibrate_share!r}; it must be a finite number")
    if cfg.distill.calibrate_share < 0 or cfg.distill.calibrate_batches <= 0:
        raise ConfigError("config key 'distill.calibrate_share' must be >= 0 and 'distill.calibrate_batches' positive")
    _check_resolutions(cfg)
    _validate_values(cfg)


def _check_resolutions(cfg: Config) -> None:
    """CCA's integer merge (Eq. 6) needs m = teacher/student size to be an integer on each axis."""
    if cfg.train.mode != "distill" or cfg.distill.merge != "integer" or cfg.distill.logit not in ("cca",):
        return
    for axis, t, s in zip("HW", cfg.teacher.input_size, cfg.model.input_size):
        if t % s:
            raise ConfigError(
                f"config key 'model.input_size' ({s} along {axis}) does not divide "
                f"'teacher.input_size' ({t}); choose a divisor or set distill.merge=overlap or centred"
            )


def _validate_values(cfg: Config) -> None:
    """Numbers that would fail only later (workers, batch sizes, learning rate)."""
    import math

    checks = {
        "data.workers": (cfg.data.workers, lambda v: v >= 0, "must be 0 or more"),
        "eval.batch_size": (cfg.eval.batch_size, lambda v: v > 0, "must be positive"),
        "train.lr": (cfg.train.lr, lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0"),
        "train.weight_decay": (cfg.train.weight_decay, lambda v: math.isfinite(v) and v >= 0,
                               "must be a finite number >= 0"),
        "train.lr_factor": (cfg.train.lr_factor, lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0"),
        "train.val_every": (cfg.train.val_every, lambda v: v > 0, "must be positive"),
        "data.max_samples": (cfg.data.max_samples, lambda v: v >= 0, "must be 0 (all) or more"),
        "data.cache_max_gb": (cfg.data.cache_max_gb, lambda v: math.isfinite(v) and v >= 0,
                              "must be a finite number >= 0"),
        "teacher.cache_max_gb": (cfg.teacher.cache_max_gb, lambda v: math.isfinite(v) and v >= 0,
                                 "must be a finite number >= 0"),
        "train.threads": (cfg.train.threads, lambda v: v in ("auto", "all") or (v.isdigit() and int(v) > 0),
                          "must be 'auto', 'all' or a positive integer"),
    }
    for key, (value, ok, rule) in checks.items():
        if not ok(value):
            raise ConfigError(f"config key '{key}' is {value!r}; it {rule}")
    device = cfg.train.device
    if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"config key 'train.device' is {device!r}; use auto, cpu, cuda or cuda:N")


def save_config(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def run_name(cfg: Config) -> str:
    """Folder name that records the setup, e.g. ``distill_w32-256_to_w32-64_mpii_s0``."""
    if cfg.train.run_name:
        return cfg.train.run_name

    def tag(arch: str, size: tuple[int, int]) -> str:
        short = arch.replace("hrnet_", "").replace("resnet", "r")
        return f"{short}-{size[0]}" if size[0] == size[1] else f"{short}-{size[0]}x{size[1]}"

    student = tag(cfg.model.arch, cfg.model.input_size)
    seed = f"s{cfg.train.seed}"
    if cfg.train.mode == "distill":
        teacher = tag(cfg.teacher.arch, cfg.teacher.input_size)
        return f"distill-{cfg.distill.fidelity}_{teacher}_to_{student}_{cfg.data.dataset}_{seed}"
    return f"{cfg.train.mode}_{student}_{cfg.data.dataset}_{seed}"
