"""``python -m cdkd train`` and ``python -m cdkd eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdkd.config import ConfigError, list_presets, load_config


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdkd train", description="Train a teacher, baseline or CDKD student.")
    p.add_argument("--config", "-c", default=None,
                   help=f"preset name or YAML file (default: the paper's main setting); presets: {', '.join(list_presets())}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.epochs=10 (repeatable; default: none)")
    p.add_argument("--out", default=None, help="run folder (default: train.out_dir/<run name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="LAST_PTH",
                   help="continue the run in --out from its last.pth (only the run folder's own; with --overwrite, "
                        "the last.pth of a killed --overwrite continues that replacement) (default without a path: the "
                        "run folder's own last.pth; default without --resume: a new run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in the run folder; the old files stay until the new run has "
                        "finished (default: refuse to write into a folder that holds a run)")
    p.add_argument("--accept-config-change", action="store_true",
                   help="with --resume: continue even though the config differs from the checkpoint's; the new "
                        "values are applied and recorded in config.yaml, epochs.jsonl and metrics.json "
                        "(default: refuse, naming the changed keys)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit (default: off)")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdkd eval", description="Evaluate a checkpoint with the official protocol.")
    p.add_argument("--checkpoint", required=True, help="cdkd checkpoint, best.pth or last.pth (required)")
    p.add_argument("--config", "-c", default=None, help="config to evaluate with (default: the checkpoint's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set data.root=data/mpii (repeatable; default: none)")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None,
                      help="flip test on (default: the config's eval.flip_test)")
    flip.add_argument("--no-flip", dest="flip", action="store_false",
                      help="flip test off (default: the config's eval.flip_test)")
    p.add_argument("--out", default=None, help="metrics JSON path (default: <checkpoint>_eval.json beside the checkpoint)")
    return p


def train_main(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        from cdkd.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return 0
    if args.accept_config_change and not args.resume:
        raise ConfigError("--accept-config-change applies to --resume only")
    from cdkd.engine.train import fit

    run_dir = fit(cfg, run_dir=args.out, resume=args.resume, overwrite=args.overwrite,
                  accept_config_change=args.accept_config_change)
    print(f"run folder: {run_dir}")
    return 0


def eval_main(argv: list[str]) -> int:
    args = _eval_parser().parse_args(argv)
    from cdkd.checkpoint import load_checkpoint
    from cdkd.data.topdown import build_dataset
    from cdkd.engine.dist import resolve_device
    from cdkd.engine.evaluate import check_eval_data, evaluate, write_metrics
    from cdkd.engine.run import check_writable
    from cdkd.engine.train import check_device
    from cdkd.models.load import load_model

    from cdkd.engine.run import resolved_config

    state = load_checkpoint(args.checkpoint)
    recorded = resolved_config(state["config"], Path(args.checkpoint).parent) if state.get("config") else {}
    cfg = load_config(args.config or recorded, args.overrides)
    check_device(cfg)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + "_eval.json")
    check_writable(out.parent, "the folder of --out")  # before the evaluation, not after
    model = load_model(args.checkpoint)
    device = resolve_device(cfg.train.device)
    model.to(device)
    dataset = build_dataset(cfg, "val", tuple(model.input_size), model.split_ratio)
    check_eval_data(dataset, cfg)
    metrics = evaluate(model, dataset, cfg, device, flip=args.flip)
    record = write_metrics(out, metrics, cfg, model, extra={"checkpoint": str(args.checkpoint),
                                                             "skipped": list(dataset.skipped)})
    print(json.dumps({"metrics": record["metrics"], "protocol": record["protocol"]}, indent=2, default=float))
    print(f"written: {out}")
    return 0


def one_line(err: BaseException) -> str:
    """The error's message on one line: a DataLoader worker's error is reduced to the original
    message (torch puts the worker's whole traceback into it)."""
    text = str(err).strip() or type(err).__name__
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].split(".")[-1][:1].isupper() else last
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines)


def run_command(command: str, main) -> int:
    """Run ``main()`` (a command's body); bad input (config, data, checkpoint, files) ends with a
    one-line message and exit code 2, not a traceback. Used by every ``python -m cdkd`` command that
    trains or evaluates."""
    from cdkd.checkpoint import CheckpointError
    from cdkd.data import DataError
    from cdkd.engine.run import FolderInUseError
    from cdkd.engine.train import RunFolderError

    try:
        return main()
    except (RunFolderError, FolderInUseError) as err:
        print(f"cdkd {command}: {one_line(err)}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"cdkd {command}: config error: {one_line(err)}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, FileNotFoundError) as err:
        print(f"cdkd {command}: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable folder, disk full, ...
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"cdkd {command}: {err.strerror or one_line(err)}{where}", file=sys.stderr)
        return 2


def cli(argv: list[str], command: str = "train") -> int:
    """``python -m cdkd train`` / ``eval`` (errors: :func:`run_command`)."""
    return run_command(command, lambda: train_main(argv) if command == "train" else eval_main(argv))
