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


VARIANT_LABELS = {
    "baseline": "SimCC (baseline)",
    "cdkd-paper": "CDKD (paper)",
    "cdkd-official": "CDKD (official)",
    "cdkd-random-teacher": "control: CDKD (paper), untrained teacher",
}


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


def summarize(runs: list[dict], columns: tuple[str, ...]) -> dict[tuple[str, int], dict[str, tuple[float, float, int]]]:
    """(label, resolution) -> column -> (mean, sample std, number of seeds)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["resolution"]), []).append(r)
    table = {}
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
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


def markdown_table(runs: list[dict], dataset: str, arch_for_paper: str = "hrnet_w32") -> str:
    """One row per (method, resolution): metric columns, Params, FLOPs, the paper's number."""
    columns = MPII_COLUMNS if dataset == "mpii" else COCO_COLUMNS
    table = summarize(runs, columns)
    extra = ("Params (M)", "GFLOPs (paper conv.)", "GMACs (exact)")
    head = ["Method", "Res", "Seeds", *columns, *extra, "Paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    main = "Mean" if dataset == "mpii" else "AP"
    for (label, res), row in table.items():
        method = "cdkd" if label.startswith("CDKD") else "simcc" if label.startswith("SimCC") else None
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
    """A run's final ETHT state and distillation share, from its record: tau and xi of the last
    epoch, and the mean share of the update of each distillation term over its logged steps."""
    train = record.get("last_epoch_train") or {}
    config = record.get("config", {}).get("distill", {})
    distill = record.get("mode") == "distill"
    return {
        "tau": float(train["tau"]) if distill and "tau" in train else math.nan,
        "xi": float(train["xi"]) if distill and "xi" in train else math.nan,
        "share": float(train.get("share_feature", 0.0) + train.get("share_logit", 0.0)) if "share_task" in train else math.nan,
        "alpha": float(config.get("alpha", math.nan)) if distill else 0.0,
        "beta": float(config.get("beta", math.nan)) if distill else 0.0,
    }


def _word(ci: tuple[float, float]) -> str:
    if not ci[0] <= ci[1]:
        return "cannot be compared with (fewer than 2 paired seeds)"
    if ci[0] > 0:
        return "beat"
    if ci[1] < 0:
        return "was worse than"
    return "did not differ significantly from"


def verdict(runs: list[dict], dataset: str) -> list[str]:
    """Plain sentences, written from the numbers: for each arm and resolution, the paired difference
    to the baseline with its 95% CI, the paired t-test and the Wilcoxon test. An arm 'beat' the
    baseline only when the whole interval is above zero."""
    column = "Mean" if dataset == "mpii" else "AP"
    out = []
    labels = sorted({r["label"] for r in runs if is_study_arm(r) and r["label"] != "SimCC (baseline)"})
    for res in sorted({r["resolution"] for r in runs if r["label"] != "teacher"}):
        for label in labels:
            d = paired_difference(runs, label, res, column)
            if d["n"] == 0:
                continue
            st = paired_stats(list(d["per_seed"].values()))
            lo, hi = st["ci95"]
            out.append(
                f"- {res}x{res}, {label} {_word(st['ci95'])} the baseline: {column} difference "
                f"{st['mean']:+.2f} (95% CI [{lo:+.2f}, {hi:+.2f}], {st['n']} paired seeds, "
                f"{d['wins']} ahead / {d['losses']} behind; paired t-test p = {st['t_p']:.3g}, "
                f"Wilcoxon signed-rank p = {st['wilcoxon_p']:.3g}). Power: the interval's half-width, "
                f"{(hi - lo) / 2:.2f}, is the smallest mean difference these seeds can tell from zero."
            )
    return out


def arms_table(runs: list[dict], dataset: str) -> str:
    """Per resolution and arm: mean ± std, the paired difference to the baseline with its 95% CI and
    tests, the final tau and xi, the loss weights and the measured distillation share."""
    column = "Mean" if dataset == "mpii" else "AP"
    head = ["Res", "Arm", "Seeds", f"{column} (mean ± std)", "Δ vs baseline", "95% CI", "t-test p",
            "Wilcoxon p", "final tau", "final xi", "alpha", "beta", "distill. share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    students = [r for r in runs if is_study_arm(r)]
    for res in sorted({r["resolution"] for r in students}):
        here = [r for r in students if r["resolution"] == res]
        for label in sorted({r["label"] for r in here}, key=lambda x: (x != "SimCC (baseline)", x)):
            members = [r for r in here if r["label"] == label]
            values = mean_std([float(r["metrics"][column]) for r in members])
            states = [run_state(r) for r in members]

            def avg(key, fmt, states=states):
                vals = [s[key] for s in states if not math.isnan(s[key])]
                return fmt.format(sum(vals) / len(vals)) if vals else "-"

            if label == "SimCC (baseline)":
                diff = ci = tp = wp = "-"
            else:
                st = paired_stats(list(paired_difference(runs, label, res, column)["per_seed"].values()))
                diff = f"{st['mean']:+.2f}" if st["n"] else "-"
                ci = f"[{st['ci95'][0]:+.2f}, {st['ci95'][1]:+.2f}]" if st["n"] > 1 else "-"
                tp = f"{st['t_p']:.3g}" if not math.isnan(st["t_p"]) else "-"
                wp = f"{st['wilcoxon_p']:.3g}" if not math.isnan(st["wilcoxon_p"]) else "-"
            lines.append("| " + " | ".join([
                f"{res}x{res}", label, str(values[2]), _fmt(values), diff, ci, tp, wp,
                avg("tau", "{:.2f}"), avg("xi", "{:.2f}"), avg("alpha", "{:.3g}"), avg("beta", "{:.3g}"),
                avg("share", "{:.1%}")]) + " |")
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
        label = {"simcc": "SimCC (baseline)", "cdkd": "CDKD (paper)"}.get(method)
        if label:
            out.setdefault(label, {})[f"{res}x{res}"] = value
    return out


def bar_table(runs: list[dict], dataset: str) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> {resolution: (mean, std)} of the main metric over the study's arms (no teacher, no
    single-seed sweep point), for ``viz.plot_metric_bars``."""
    main = "Mean" if dataset == "mpii" else "AP"
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for (label, res), row in summarize([r for r in runs if is_study_arm(r)], (main,)).items():
        mean, std, _ = row[main]
        out.setdefault(label, {})[f"{res}x{res}"] = (mean, std)
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
        "## Did CDKD beat the baseline?",
        "",
        "Paired by seed (each arm's run of seed s starts from the same student initialisation and data",
        "order as the baseline's). Δ is arm minus baseline; the 95% CI is Student's t over the paired",
        "differences; p-values are two-sided (paired t-test; Wilcoxon signed-rank). The final tau and xi",
        "are the last epoch's; the distillation share is the feature and logit terms' share of the Adam",
        "update on the student's parameters (cdkd.diagnose), averaged over the last epoch's logged steps.",
        "",
        arms_table(students, dataset),
        "",
        *(verdict(students, dataset) or ["- No paired runs found."]),
        "",
    ]
    if teacher:
        lines += ["## Teacher", "", markdown_table(teacher, dataset), ""]
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
    MPII 64x64 ablation number beside it (orientation only: the paper's runs are on real MPII)."""
    from cdkd.reference import MPII_64_ABLATIONS

    column = "Mean" if dataset == "mpii" else "AP"
    lines = [f"| Variant | {column} | Paper (MPII 64x64) |", "|---|---|---|"]
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
