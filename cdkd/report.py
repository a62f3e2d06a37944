"""Results tables in the paper's format, aggregated over seeds, with the paper's numbers beside ours.

Reads the ``metrics.json`` that every training run writes, groups runs by method and resolution,
and reports mean and standard deviation over seeds, plus the paired (same seed) difference
between each CDKD variant and the baseline. Nothing is tuned or selected here: every run found is
counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cdkd.reference import paper_number

MPII_COLUMNS = ("Head", "Sho.", "Elb.", "Wri.", "Hip", "Knee", "Ank.", "Mean", "Mean@0.1")
COCO_COLUMNS = ("AP", "AP50", "AP75", "APM", "APL", "AR")


def method_label(record: dict) -> str:
    mode = record.get("mode")
    if mode == "distill":
        d = record["config"]["distill"]
        if d["feature"] == "sape" and d["logit"] == "cca":
            return f"CDKD ({d['fidelity']})"
        return f"distill {d['feature']}+{d['logit']} ({d['fidelity']})"
    return {"baseline": "SimCC (baseline)", "teacher": "teacher"}.get(mode, str(mode))


BASELINE = "SimCC (baseline)"
PAPER = "CDKD (paper)"
CONTROL_A = "control: CDKD (paper), untrained teacher"
CONTROL_B = "control: CDKD (paper), shuffled teacher"

VARIANT_LABELS = {
    "baseline": BASELINE,
    "cdkd-paper": PAPER,
    "cdkd-official": "CDKD (official)",
    "cdkd-random-teacher": CONTROL_A,
    "cdkd-shuffled-teacher": CONTROL_B,
    "cdkd-paper-tau4": "CDKD (paper), fixed tau 4",
    "sape": "component: SAPE alone",
    "cca-etht": "component: CCA+ETHT alone",
}

# The comparisons that isolate the teacher's knowledge: the paper arm against each control, paired by
# seed (the controls share the paper arm's alpha and beta, cdkd.pipeline.SHARED_WEIGHTS).
CONTROLS = {CONTROL_A: "the untrained teacher (control A)", CONTROL_B: "the shuffled teacher (control B)"}


def variant_label(record: dict) -> str | None:
    """Label of a run from its own record (``metrics.json``'s ``variant``); ablations keep their name."""
    variant = record.get("variant") or record.get("config", {}).get("train", {}).get("variant")
    if not variant or variant in ("teacher", "distill"):  # no arm recorded: labelled by its mode
        return None
    if variant.startswith("share-"):
        return f"sweep: share {variant[len('share-'):]} per term"
    return VARIANT_LABELS.get(variant, f"ablation: {variant}")


def is_study_arm(record: dict) -> bool:
    """A run of the paired study (not the teacher, not a single-seed sweep point; see :func:`share_sweep`)."""
    return record["label"] != "teacher" and not record["label"].startswith("sweep:")


def _only(only) -> set[str] | None:
    """``'teacher,r32_s0_baseline'`` (or a list) as a set of run folder names; None for '' / None (all)."""
    names = [n.strip() for n in only.split(",")] if isinstance(only, str) else list(only or ())
    names = [n for n in names if n]
    return set(names) if names else None


def ignored_runs(root: str | Path, only) -> list[str]:
    """The finished runs below ``root`` that ``only`` leaves out (folder names, sorted)."""
    keep = _only(only)
    found = [p.parent.relative_to(root).as_posix() for p in sorted(Path(root).rglob("metrics.json"))]
    return [] if keep is None else [name for name in found if name not in keep]


def load_runs(root: str | Path, only=None) -> list[dict]:
    """Every ``metrics.json`` below ``root`` with its run folder, label, resolution and seed.

    ``only``: run folder names (relative to ``root``, comma-separated or a list) to keep, e.g. the
    runs one ``reproduce`` call asked for; '' or None keeps every run."""
    keep = _only(only)
    runs = []
    for path in sorted(Path(root).rglob("metrics.json")):
        if keep is not None and path.parent.relative_to(root).as_posix() not in keep:
            continue
        with open(path) as f:
            record = json.load(f)
        if "metrics" not in record or "model" not in record:
            continue
        record["run_dir"] = str(path.parent)
        record["label"] = variant_label(record) or method_label(record)
        record["resolution"] = int(record.get("res") or record["model"]["input_size"][0])
        record["seed"] = int(record.get("seed", record["config"]["train"]["seed"]))
        runs.append(record)
    return runs


def mean_std(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def arm_order(label: str) -> tuple[int, str]:
    """Sort key of the tables' rows: the baseline first, the paper arm, other CDKD arms (as released,
    a fixed tau), the components, the controls, anything else; alphabetical within each."""
    kinds = (lambda x: x == BASELINE, lambda x: x == PAPER, lambda x: x.startswith("CDKD"),
             lambda x: x.startswith("component"), lambda x: x.startswith("control"))
    return next((i for i, kind in enumerate(kinds) if kind(label)), len(kinds)), label


def summarize(runs: list[dict], columns: tuple[str, ...]) -> dict[tuple[str, int], dict[str, tuple[float, float, int]]]:
    """(label, resolution) -> column -> (mean, sample std, number of seeds)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["resolution"]), []).append(r)
    table = {}
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][1], arm_order(kv[0][0]))):
        row = {c: mean_std([float(m["metrics"][c]) for m in members if c in m["metrics"]]) for c in columns}
        row["Params (M)"] = (members[0]["model"]["params"] / 1e6, 0.0, len(members))
        row["GFLOPs (paper conv.)"] = (members[0]["model"]["paper_gflops"], 0.0, len(members))
        row["GMACs (exact)"] = (members[0]["model"]["gmacs"], 0.0, len(members))
        table[key] = row
    return table


def paired_difference(runs: list[dict], label: str, resolution: int, column: str,
                      baseline: str = "SimCC (baseline)") -> dict:
    """Per-seed ``label - baseline`` on ``column`` for the seeds both have."""
    by_seed = {}
    for r in runs:
        if r["resolution"] == resolution and r["label"] in (label, baseline) and column in r["metrics"]:
            by_seed.setdefault(r["seed"], {})[r["label"]] = float(r["metrics"][column])
    diffs = {s: v[label] - v[baseline] for s, v in sorted(by_seed.items()) if label in v and baseline in v}
    mean, std, n = mean_std(list(diffs.values()))
    return {"per_seed": diffs, "mean": mean, "std": std, "n": n,
            "wins": sum(d > 0 for d in diffs.values()), "losses": sum(d < 0 for d in diffs.values())}


def _fmt(cell: tuple[float, float, int], digits: int = 2) -> str:
    mean, std, n = cell
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 and std > 0 else f"{mean:.{digits}f}"


PAPER_METHODS = {"SimCC (baseline)": "simcc", "CDKD (paper)": "cdkd"}  # arms the paper reports a number for


def markdown_table(runs: list[dict], dataset: str, arch_for_paper: str = "hrnet_w32") -> str:
    """One row per (method, resolution): metric columns, Params, FLOPs, the paper's number."""
    columns = MPII_COLUMNS if dataset == "mpii" else COCO_COLUMNS
    table = summarize(runs, columns)
    extra = ("Params (M)", "GFLOPs (paper conv.)", "GMACs (exact)")
    head = ["Method", "Res", "Seeds", *columns, *extra, "Paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    main = "Mean" if dataset == "mpii" else "AP"
    for (label, res), row in table.items():
        method = PAPER_METHODS.get(label)  # the paper's CDKD number belongs to its form, not to the released code
        ref = paper_number(dataset, arch_for_paper, res, method) if method else None
        cells = [label, f"{res}x{res}", str(row[main][2]), *(_fmt(row[c]) for c in columns),
                 f"{row['Params (M)'][0]:.3f}", f"{row['GFLOPs (paper conv.)'][0]:.4f}",
                 f"{row['GMACs (exact)'][0]:.4f}", f"{ref:.3f}" if ref is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_stats(diffs: list[float]) -> dict:
    """Mean paired difference with its 95% confidence interval (Student t), the paired t-test and
    the Wilcoxon signed-rank test (both two-sided; scipy.stats)."""
    from scipy import stats

    mean, std, n = mean_std(diffs)
    out = {"mean": mean, "std": std, "n": n, "ci95": (math.nan, math.nan), "t_p": math.nan, "wilcoxon_p": math.nan}
    if n < 2:
        return out
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    out["ci95"] = (mean - half, mean + half)
    if std > 0:
        out["t_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    if any(d != 0 for d in diffs):
        out["wilcoxon_p"] = float(stats.wilcoxon(diffs).pvalue)
    return out


def run_state(record: dict) -> dict[str, float]:
    """A run's mechanism, from its record (``metrics.json``): tau of the first epoch (its start: xi
    is 0 there) and of the last, xi of the last epoch, the merged teacher target's normalised entropy
    at the run's tau (mean over the last epoch's steps, 1 = uniform), the share of the update of
    each term of Eq. 8 (mean over the last epoch's logged steps) and the loss weights."""
    train = record.get("last_epoch_train") or {}
    first = record.get("first_epoch_train") or {}
    config = record.get("config", {}).get("distill", {})
    distill = record.get("mode") == "distill"
    logit = distill and config.get("logit", "cca") != "none"  # tau only acts through the logit term

    def value(source, key):
        return float(source[key]) if logit and key in source else math.nan

    shares = {f"share_{k}": float(train[f"share_{k}"]) if f"share_{k}" in train else math.nan
              for k in ("task", "feature", "logit")}
    return {
        "tau": value(train, "tau"),
        "tau_start": value(first, "tau"),
        "xi": float(train["xi"]) if distill and "xi" in train else math.nan,
        "entropy": value(train, "target_entropy"),
        "share": shares["share_feature"] + shares["share_logit"] if "share_task" in train else math.nan,
        **shares,
        "alpha": float(config.get("alpha", math.nan)) if distill else 0.0,
        "beta": float(config.get("beta", math.nan)) if distill else 0.0,
    }


def arm_state(runs: list[dict], label: str, resolution: int) -> dict[str, float]:
    """:func:`run_state` averaged over an arm's seeds at one resolution (NaN where no run has it)."""
    states = [run_state(r) for r in runs if r["label"] == label and r["resolution"] == resolution]
    out = {}
    for key in ("tau", "tau_start", "xi", "entropy", "share", "share_task", "share_feature", "share_logit",
                "alpha", "beta"):
        vals = [st[key] for st in states if not math.isnan(st[key])]
        out[key] = sum(vals) / len(vals) if vals else math.nan
    return out


def _word(ci: tuple[float, float]) -> str:
    if not ci[0] <= ci[1]:
        return "cannot be compared with (fewer than 2 paired seeds)"
    if ci[0] > 0:
        return "beat"
    if ci[1] < 0:
        return "was worse than"
    return "did not differ significantly from"


def comparison(runs: list[dict], label: str, reference: str, resolution: int, column: str) -> dict:
    """``label - reference`` paired by seed at one resolution: :func:`paired_difference` (per seed,
    wins, losses) with :func:`paired_stats` (mean, 95% CI, tests) merged in."""
    d = paired_difference(runs, label, resolution, column, baseline=reference)
    return {**d, **paired_stats(list(d["per_seed"].values()))}


def _comparison_line(res: int, label: str, reference: str, c: dict, column: str) -> str:
    lo, hi = c["ci95"]
    return (f"- {res}x{res}, {label} {_word(c['ci95'])} {reference}: {column} difference "
            f"{c['mean']:+.2f} (95% CI [{lo:+.2f}, {hi:+.2f}], {c['n']} paired seeds, "
            f"{c['wins']} ahead / {c['losses']} behind; paired t-test p = {c['t_p']:.3g}, "
            f"Wilcoxon signed-rank p = {c['wilcoxon_p']:.3g}). Power: the interval's half-width, "
            f"{(hi - lo) / 2:.2f}, is the smallest mean difference these seeds can tell from zero.")


def verdict(runs: list[dict], dataset: str) -> list[str]:
    """Plain sentences, written from the numbers: for each arm and resolution, the paired difference
    to the baseline with its 95% CI, the paired t-test and the Wilcoxon test; then the paper arm
    against each control (:data:`CONTROLS`), paired the same way. An arm 'beat' another only when
    the whole interval is above zero."""
    column = "Mean" if dataset == "mpii" else "AP"
    out = []
    labels = sorted({r["label"] for r in runs if is_study_arm(r) and r["label"] != BASELINE}, key=arm_order)
    for res in sorted({r["resolution"] for r in runs if r["label"] != "teacher"}):
        for label in labels:
            c = comparison(runs, label, BASELINE, res, column)
            if c["n"]:
                out.append(_comparison_line(res, label, "the baseline", c, column))
        for control, name in CONTROLS.items():
            c = comparison(runs, PAPER, control, res, column)
            if c["n"]:
                out.append(_comparison_line(res, PAPER, name, c, column))
    return out


def _interval(c: dict) -> str:
    if c["n"] < 2:
        return f"{c['mean']:+.2f} from {c['n']} paired seed, no interval"
    return f"{c['mean']:+.2f}, 95% CI [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}], {c['n']} paired seeds"


def _transfer(against: dict[str, dict]) -> tuple[bool, str]:
    """(shown, clause): does the paper arm beat every control present (whole 95% CI above zero)?"""
    parts = [f"{name} ({_interval(c)})" for name, c in against.items()]
    decided = {name: c for name, c in against.items() if c["n"] >= 2}
    above = [name for name, c in decided.items() if c["ci95"][0] > 0]
    below = [name for name, c in decided.items() if c["ci95"][1] < 0]
    if len(decided) < len(against):
        return False, f"whether the teacher's knowledge transfers cannot be decided (too few paired seeds: {', '.join(parts)})"
    if len(above) == len(against):
        return True, f"the teacher's knowledge transfers: CDKD (paper) beat {' and '.join(parts)}"
    if below:
        return False, f"the teacher's knowledge does not help: CDKD (paper) was worse than {' and '.join(below)} ({', '.join(parts)})"
    if above:
        return False, (f"the transfer of the teacher's knowledge is not established: CDKD (paper) beat "
                       f"{' and '.join(above)} but not the other control ({'; '.join(parts)})")
    return False, f"no transfer of the teacher's knowledge is shown: CDKD (paper) did not differ from {' or '.join(parts)}"


def answer(runs: list[dict], dataset: str) -> list[str]:
    """The answer in one sentence per resolution, written from the numbers: does the teacher's
    knowledge transfer (the paper arm against both controls, paired 95% CIs), how large is the
    effect against the baseline, and, where either is not shown, what was measured (the merged
    teacher target's normalised entropy at the run's tau and the distillation terms' share)."""
    column = "Mean" if dataset == "mpii" else "AP"
    out = []
    for res in sorted({r["resolution"] for r in runs if r["label"] == PAPER}):
        against = {name: comparison(runs, PAPER, control, res, column) for control, name in CONTROLS.items()}
        against = {name: c for name, c in against.items() if c["n"]}
        base = comparison(runs, PAPER, BASELINE, res, column)
        if not against:
            transfer, clause = False, "no control arm ran, so whether the teacher's knowledge transfers is not tested"
        else:
            transfer, clause = _transfer(against)
        if base["n"] >= 2:
            effect = f"against the baseline CDKD (paper) {_word(base['ci95'])} it ({column} {_interval(base)})"
        else:
            effect = f"against the baseline: {column} {_interval(base)}" if base["n"] else "no paired baseline ran"
        gained = base["n"] >= 2 and base["ci95"][0] > 0
        why = ""
        if not (transfer and gained):
            st = arm_state(runs, PAPER, res)
            why = (f"; measured in the paper arm: the merged teacher target's normalised entropy at tau "
                   f"{st['tau']:.2f} was {st['entropy']:.3f} (1 = uniform) and the distillation terms had "
                   f"{st['share']:.0%} of the update (feature {st['share_feature']:.0%}, logit {st['share_logit']:.0%})")
        out.append(f"- {res}x{res}: {clause}; {effect}{why}.")
    return out


def _cell(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else fmt.format(value)


def arms_table(runs: list[dict], dataset: str) -> str:
    """Per resolution and arm: mean ± std, the paired difference to the baseline with its 95% CI and
    tests, the loss weights, and the mechanism (:func:`arm_state`, means over seeds): tau at the
    start and the end, the merged teacher target's normalised entropy at that tau, and each term's
    share of the update."""
    column = "Mean" if dataset == "mpii" else "AP"
    head = ["Res", "Arm", "Seeds", f"{column} (mean ± std)", "Δ vs baseline", "95% CI", "t-test p",
            "Wilcoxon p", "alpha", "beta", "tau (1st → last epoch)", "target entropy", "share task / feature / logit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    students = [r for r in runs if is_study_arm(r)]
    for res in sorted({r["resolution"] for r in students}):
        here = [r for r in students if r["resolution"] == res]
        for label in sorted({r["label"] for r in here}, key=arm_order):
            values = mean_std([float(r["metrics"][column]) for r in here if r["label"] == label])
            st = arm_state(here, label, res)
            if label == BASELINE:
                diff = ci = tp = wp = "-"
            else:
                c = comparison(runs, label, BASELINE, res, column)
                diff = f"{c['mean']:+.2f}" if c["n"] else "-"
                ci = f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]" if c["n"] > 1 else "-"
                tp = _cell(c["t_p"], "{:.3g}")
                wp = _cell(c["wilcoxon_p"], "{:.3g}")
            tau = "-" if math.isnan(st["tau"]) else f"{_cell(st['tau_start'], '{:.2f}')} → {st['tau']:.2f}"
            shares = ("-" if math.isnan(st["share_task"]) else
                      f"{st['share_task']:.0%} / {st['share_feature']:.0%} / {st['share_logit']:.0%}")
            lines.append("| " + " | ".join([
                f"{res}x{res}", label, str(values[2]), _fmt(values), diff, ci, tp, wp,
                _cell(st["alpha"], "{:.3g}"), _cell(st["beta"], "{:.3g}"), tau,
                _cell(st["entropy"], "{:.3f}"), shares]) + " |")
    return "\n".join(lines)


def teacher_note(record: dict) -> str:
    """Which teacher the students load and its number: ``best.pth`` is written at each validation
    that improves; when the teacher validated only at its final epoch (``train.val_every`` >=
    epochs) that file is the final epoch's weights, with no selection."""
    train = record["config"]["train"]
    metrics = record["metrics"]
    main = float(metrics["main"] if "main" in metrics else metrics.get("Mean", metrics.get("AP", math.nan)))
    best = float(record.get("best", math.nan))
    name = (record.get("protocol") or {}).get("metric", "PCKh")
    if train["val_every"] >= train["epochs"]:
        return (f"The students distil from this teacher's `best.pth`, its final-epoch weights (epoch {train['epochs']}; "
                f"validated only then, so nothing was selected): {name} {main:.2f}.")
    if best == main:
        return (f"The students distil from `best.pth`, validated every {train['val_every']} epochs; the final epoch "
                f"was the best: {name} {main:.2f}.")
    return (f"Warning: the students distil from `best.pth` ({name} {best:.2f}), chosen among validations every "
            f"{train['val_every']} epochs on the persons that also score the students; the final epoch had {main:.2f}.")


def curve_runs(out_dir: str | Path) -> list[dict]:
    """The training-length curve's runs (:func:`cdkd.pipeline.train_curve`): every run under
    ``out_dir/curve`` and the study's runs (``out_dir/runs``) of the same arms and seeds, the latter
    marked ``in_study``."""
    out_dir = Path(out_dir)
    if not (out_dir / "curve").is_dir():
        return []
    curve = load_runs(out_dir / "curve")
    keys = {(r["label"], r["seed"]) for r in curve}
    study = [{**r, "in_study": True} for r in load_runs(out_dir / "runs")
             if (r["label"], r["seed"]) in keys] if (out_dir / "runs").is_dir() else []

    def length(r):
        return r["label"], r["seed"], r["resolution"], int(r["config"]["train"]["epochs"])

    counted = {length(r) for r in study}  # a curve run repeating a study run's length is not counted twice
    return [r for r in curve if length(r) not in counted] + study


def curve_table(runs: list[dict], dataset: str) -> str:
    """Main metric against training length: per resolution and number of epochs, each arm's value
    (mean ± sample std over its seeds) and the paper arm minus the baseline, paired by seed, with
    its 95% CI when two or more seeds have both arms at that length."""
    column = "Mean" if dataset == "mpii" else "AP"
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["resolution"], int(r["config"]["train"]["epochs"])), []).append(r)
    labels = sorted({r["label"] for r in runs}, key=arm_order)
    head = ["Res", "Epochs", *(f"{label} ({column})" for label in labels), "seeds",
            f"{PAPER} − baseline (paired)", "95% CI"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (res, epochs), members in sorted(groups.items()):
        values = {label: [float(r["metrics"][column]) for r in members if r["label"] == label] for label in labels}
        cells = []
        for label in labels:
            mean, std, n = mean_std(values[label])
            cells.append(_cell(mean, "{:.2f}") + (f" ± {std:.2f}" if n > 1 else ""))
        c = comparison(members, PAPER, BASELINE, res, column)
        gap = _cell(c["mean"], "{:+.2f}") + f" ({c['n']} seed{'s' if c['n'] != 1 else ''})" if c["n"] else "-"
        ci = f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]" if c["n"] > 1 else "-"
        seeds = "/".join(str(len(values[label])) for label in labels)
        lines.append("| " + " | ".join([f"{res}x{res}", str(epochs), *cells, seeds, gap, ci]) + " |")
    return "\n".join(lines)


def load_run(run_dir: str | Path) -> dict:
    """The ``metrics.json`` of one run (with its label), for display in a notebook."""
    runs = [r for r in load_runs(run_dir) if Path(r["run_dir"]) == Path(run_dir)]
    if not runs:
        raise FileNotFoundError(f"no metrics.json in {run_dir}: has the run finished?")
    return runs[0]


def paper_table(dataset: str) -> dict[str, dict[str, float]]:
    """The paper's main numbers as bar-chart references: label -> {resolution column: value}."""
    from cdkd.reference import COCO_AP, MPII_PCKH_MEAN

    table = MPII_PCKH_MEAN if dataset == "mpii" else COCO_AP
    out: dict[str, dict[str, float]] = {}
    for (arch, res, method), value in table.items():
        if arch != "hrnet_w32" and dataset == "mpii":
            continue
        label = {m: arm for arm, m in PAPER_METHODS.items()}.get(method)
        if label:
            out.setdefault(label, {})[f"{res}x{res}"] = value
    return out


def bar_table(runs: list[dict], dataset: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """label -> {resolution: (mean, std, number of seeds)} of the main metric over the study's arms (no
    teacher, no single-seed sweep point), for ``viz.plot_metric_bars``."""
    main = "Mean" if dataset == "mpii" else "AP"
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for (label, res), row in summarize([r for r in runs if is_study_arm(r)], (main,)).items():
        out.setdefault(label, {})[f"{res}x{res}"] = row[main]
    return out


def write_summary(out_dir: str | Path, dataset: str = "mpii", title: str = "cdkd results",
                  note: str = "", only=None) -> Path:
    """``summary.md``: the results table (mean ± std over seeds), the paper's numbers, the verdict.

    ``only``: the run folders to count (:func:`load_runs`); the others found are listed as ignored."""
    out_dir = Path(out_dir)
    runs = load_runs(out_dir / "runs", only)
    ignored = ignored_runs(out_dir / "runs", only)
    if not runs:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {out_dir / 'runs'}")
    protocol = next((r["protocol"] for r in runs if r.get("protocol")), {})
    teacher = [r for r in runs if r["label"] == "teacher"]
    students = [r for r in runs if r["label"] != "teacher"]
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"Protocol: {protocol.get('dataset', dataset)} {protocol.get('split', '')}, "
        f"{protocol.get('persons', '?')} persons, boxes from {protocol.get('boxes', '?')}, "
        f"flip test {'on (' + str(protocol.get('flip_shift')) + ' shift)' if protocol.get('flip_test') else 'off'}, "
        f"metric {protocol.get('metric', '?')}.",
        "",
        "## Students (mean ± sample std over seeds)",
        "",
        markdown_table(students, dataset),
        "",
        "The 'Paper' column is the paper's HRNet-W32 number on the real dataset at that resolution, "
        "for orientation only: our numbers come from the runs listed below, on the data named above.",
        "",
        "## The answer in one sentence",
        "",
        *(answer(students, dataset) or ["- No CDKD (paper) runs found."]),
        "",
        "## Did CDKD beat the baseline?",
        "",
        "Paired by seed (each arm's run of seed s starts from the same student initialisation and data",
        "order as the baseline's). Δ is arm minus baseline; the 95% CI is Student's t over the paired",
        "differences; p-values are two-sided (paired t-test; Wilcoxon signed-rank). The controls and the",
        "component arms use the alpha and beta calibrated by the paper arm of the same seed. tau: the mean",
        "of the first epoch (its start value when xi is 0 there, as in the demo preset) and of the last",
        "(its trajectory per logged step is in each run's steps.csv); the target entropy is the merged teacher target's entropy at",
        "the run's tau divided by log C_s (1 = uniform), averaged over the last epoch's steps, joints and both",
        "axes; the shares are each term's share of the Adam update on the student's parameters",
        "(cdkd.diagnose), averaged over the last epoch's logged steps. All are means over the arm's seeds.",
        "",
        arms_table(students, dataset),
        "",
        *(verdict(students, dataset) or ["- No paired runs found."]),
        "",
    ]
    curve = curve_runs(out_dir)
    if curve:
        lines += ["## PCKh against training length" if dataset == "mpii" else "## AP against training length", "",
                  "Baseline and CDKD (paper) trained for each number of epochs (`reproduce --curve-epochs`, on the "
                  "first `--curve-seeds` seeds; the study's own length reuses its runs); the LR drops for the last "
                  "epoch. Mean ± sample std over seeds; the gap is paired by seed.", "",
                  curve_table(curve, dataset), ""]
    if teacher:
        lines += ["## Teacher", "", markdown_table(teacher, dataset), "", *(teacher_note(r) for r in teacher), ""]
    lines += ["## Runs", ""]
    lines += [f"- `{Path(r['run_dir']).relative_to(out_dir) if Path(r['run_dir']).is_relative_to(out_dir) else r['run_dir']}`"
              f": {r['label']}, {r['resolution']}x{r['resolution']}, seed {r['seed']}" for r in runs]
    if ignored:
        lines += ["", f"Found under `runs/` and not counted (not asked for by this call): "
                      + ", ".join(f"`{name}`" for name in ignored) + "."]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


ABLATION_REFERENCE = {
    "baseline": "simcc",
    "projector-ensemble": "projector ensemble",
    "sape": "+SAU",
    "necm": "NECM (fixed-tau CCA)",
    "conv-feature": "conv downsample (feature)",
    "fc-feature": "FC (feature)",
    "fc-logit": "FC logits",
    "k1": "K=1",
    "k5": "K=5",
    "cdkd-paper": "CDKD (all)",
}


def ablation_table(out_dir: str | Path, res: int, seed: int, dataset: str = "mpii") -> str:
    """Markdown table of every run at ``res`` / ``seed`` named by its variant, with the paper's
    MPII 64x64 ablation number beside it (orientation only: the paper's runs are on real MPII; the
    heading names both resolutions when ``res`` is not 64)."""
    from cdkd.reference import MPII_64_ABLATIONS

    column = "Mean" if dataset == "mpii" else "AP"
    paper = "Paper (real MPII, 64x64)" if res == 64 else f"Paper (real MPII at 64x64, not {res}x{res})"
    lines = [f"| Variant (ours, {res}x{res}, seed {seed}) | {column} | {paper} |", "|---|---|---|"]
    for r in load_runs(Path(out_dir) / "runs"):
        variant = r.get("variant") or r["config"]["train"].get("variant")
        if r["resolution"] != res or r["seed"] != seed or variant in (None, "teacher"):
            continue
        ref = MPII_64_ABLATIONS.get(ABLATION_REFERENCE.get(variant, ""), None)
        lines.append(f"| {variant} | {float(r['metrics'][column]):.2f} | {f'{ref:.3f}' if ref is not None else '-'} |")
    return "\n".join(lines) + "\n"


def share_sweep(out_dir: str | Path, res: int, seed: int, dataset: str = "mpii") -> list[dict]:
    """The distillation-weight sweep of notebook 06: for each run at ``res``/``seed`` that is the
    baseline or a ``share-S`` arm, the requested share per term, the measured total distillation
    share (last epoch) and the main metric; sorted by the requested share."""
    column = "Mean" if dataset == "mpii" else "AP"
    points = []
    for r in load_runs(Path(out_dir) / "runs"):
        variant = r.get("variant") or ""
        if r["resolution"] != res or r["seed"] != seed:
            continue
        if variant == "baseline":
            target = 0.0
        elif variant.startswith("share-"):
            target = float(r["config"]["distill"]["calibrate_share"])
        else:
            continue
        state = run_state(r)
        points.append({"target": target, "measured": 0.0 if variant == "baseline" else state["share"],
                       "metric": float(r["metrics"][column]), "alpha": state["alpha"], "beta": state["beta"],
                       "run_dir": r["run_dir"]})
    return sorted(points, key=lambda p: p["target"])


def share_sweep_table(points: list[dict], dataset: str = "mpii") -> str:
    """Markdown table of :func:`share_sweep`'s points."""
    column = "Mean" if dataset == "mpii" else "AP"
    lines = [f"| share per term (requested) | distillation share (measured, last epoch) | alpha | beta | {column} |",
             "|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['target']:g} | {p['measured']:.1%} | {p['alpha']:.3g} | {p['beta']:.3g} | {p['metric']:.2f} |")
    return "\n".join(lines) + "\n"
