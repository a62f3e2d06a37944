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


VARIANT_LABELS = {"baseline": "SimCC (baseline)", "cdkd-paper": "CDKD (paper)", "cdkd-official": "CDKD (official)"}


def variant_label(folder: str) -> str | None:
    """Label of a pipeline run folder ``r{res}_s{seed}_{variant}`` (ablations keep their name)."""
    parts = folder.split("_", 2)
    if len(parts) != 3 or not parts[0][1:].isdigit() or not parts[1][1:].isdigit():
        return None
    return VARIANT_LABELS.get(parts[2], f"ablation: {parts[2]}")


def load_runs(root: str | Path) -> list[dict]:
    """Every ``metrics.json`` below ``root`` with its run folder, label, resolution and seed."""
    runs = []
    for path in sorted(Path(root).rglob("metrics.json")):
        with open(path) as f:
            record = json.load(f)
        if "metrics" not in record or "model" not in record:
            continue
        record["run_dir"] = str(path.parent)
        record["label"] = variant_label(path.parent.name) or method_label(record)
        record["resolution"] = int(record["model"]["input_size"][0])
        record["seed"] = int(record["config"]["train"]["seed"])
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


def verdict(runs: list[dict], dataset: str) -> list[str]:
    """Plain sentences: did each CDKD variant beat the baseline, by how much, with what spread."""
    column = "Mean" if dataset == "mpii" else "AP"
    out = []
    labels = sorted({r["label"] for r in runs if r["label"].startswith("CDKD")})
    for res in sorted({r["resolution"] for r in runs if r["label"] != "teacher"}):
        for label in labels:
            d = paired_difference(runs, label, res, column)
            if d["n"] == 0:
                continue
            seeds = ", ".join(f"s{s}: {v:+.2f}" for s, v in d["per_seed"].items())
            if d["wins"] == d["n"]:
                word = "beat"
            elif d["wins"] == d["losses"] == 0:
                word = "tied with"
            elif d["losses"] == d["n"]:
                word = "did not beat (worse on every seed)"
            else:
                word = "did not consistently beat"
            out.append(
                f"- {res}x{res}, {label} {word} the baseline: {column} difference {d['mean']:+.2f} "
                f"± {d['std']:.2f} (mean ± std over {d['n']} paired seeds; {seeds})."
            )
    return out


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
    """label -> {resolution: (mean, std)} of the main metric, for ``viz.plot_metric_bars``."""
    main = "Mean" if dataset == "mpii" else "AP"
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for (label, res), row in summarize([r for r in runs if r["label"] != "teacher"], (main,)).items():
        mean, std, _ = row[main]
        out.setdefault(label, {})[f"{res}x{res}"] = (mean, std)
    return out


def write_summary(out_dir: str | Path, dataset: str = "mpii", title: str = "cdkd results",
                  note: str = "") -> Path:
    """``summary.md``: the results table (mean ± std over seeds), the paper's numbers, the verdict."""
    out_dir = Path(out_dir)
    runs = load_runs(out_dir / "runs")
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
        *(verdict(students, dataset) or ["- No paired runs found."]),
        "",
    ]
    if teacher:
        lines += ["## Teacher", "", markdown_table(teacher, dataset), ""]
    lines += ["## Runs", ""]
    lines += [f"- `{Path(r['run_dir']).relative_to(out_dir) if Path(r['run_dir']).is_relative_to(out_dir) else r['run_dir']}`"
              f": {r['label']}, {r['resolution']}x{r['resolution']}, seed {r['seed']}" for r in runs]
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
    prefix = f"r{res}_s{seed}_"
    lines = [f"| Variant | {column} | Paper (MPII 64x64) |", "|---|---|---|"]
    for r in load_runs(Path(out_dir) / "runs"):
        name = Path(r["run_dir"]).name
        if not name.startswith(prefix):
            continue
        variant = name[len(prefix):]
        ref = MPII_64_ABLATIONS.get(ABLATION_REFERENCE.get(variant, ""), None)
        lines.append(f"| {variant} | {float(r['metrics'][column]):.2f} | {f'{ref:.3f}' if ref is not None else '-'} |")
    return "\n".join(lines) + "\n"
