"""``python -m cdkd train`` and ``python -m cdkd eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdkd.config import ConfigError, config_from_dict, list_presets, load_config, parse_override, _merge, validate


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdkd train", description="Train a teacher, baseline or CDKD student.")
    p.add_argument("--config", "-c", default=None, help=f"preset name or YAML file; presets: {', '.join(list_presets())}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.epochs=10 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: train.out_dir/<run name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a last.pth (default: the run folder's own last.pth)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdkd eval", description="Evaluate a checkpoint with the official protocol.")
    p.add_argument("--checkpoint", required=True, help="cdkd checkpoint (best.pth / last.pth)")
    p.add_argument("--config", "-c", default=None, help="config to evaluate with (default: the checkpoint's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None, help="flip test on")
    flip.add_argument("--no-flip", dest="flip", action="store_false", help="flip test off")
    p.add_argument("--out", default=None, help="metrics JSON path (default: beside the checkpoint)")
    return p


def train_main(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        from cdkd.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        return 0
    from cdkd.engine.train import fit

    run_dir = fit(cfg, run_dir=args.out, resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def eval_main(argv: list[str]) -> int:
    args = _eval_parser().parse_args(argv)
    from cdkd.checkpoint import load_checkpoint, load_model
    from cdkd.data.topdown import build_dataset
    from cdkd.engine.dist import resolve_device
    from cdkd.engine.evaluate import evaluate, write_metrics

    state = load_checkpoint(args.checkpoint)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        values = state.get("config") or {}
        for text in args.overrides:
            values = _merge(values, parse_override(text))
        cfg = config_from_dict(values)
        validate(cfg)
    model = load_model(args.checkpoint)
    device = resolve_device(cfg.train.device)
    model.to(device)
    dataset = build_dataset(cfg, "val", tuple(model.input_size), model.split_ratio, train=False)
    metrics = evaluate(model, dataset, cfg, device, flip=args.flip)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + "_eval.json")
    record = write_metrics(out, metrics, cfg, model, extra={"checkpoint": str(args.checkpoint)})
    print(json.dumps({"metrics": record["metrics"], "protocol": record["protocol"]}, indent=2, default=float))
    print(f"written: {out}")
    return 0


def cli(argv: list[str], command: str = "train") -> int:
    """Run the command; bad input (config, data, checkpoint) ends with its message, not a traceback."""
    from cdkd.checkpoint import CheckpointError
    from cdkd.data import DataError

    try:
        return train_main(argv) if command == "train" else eval_main(argv)
    except ConfigError as err:
        print(f"cdkd {command}: config error: {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, FileNotFoundError) as err:
        print(f"cdkd {command}: {err}", file=sys.stderr)
        return 2
