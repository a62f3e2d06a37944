"""``python -m cdkd data ...``: generate the synthetic people dataset (see ``synthetic.py``).

    python -m cdkd data synth --out data/synth --train 4000 --val 1000 --seed 0

writes ``data/synth/{images,coco,mpii}``; the config defaults (``data.root: data/synth/mpii``)
read its MPII copy, ``data.dataset=coco data.root=data/synth/coco data.val_set=val`` its COCO copy.
"""

from __future__ import annotations

import argparse
import json


def cli(argv: list[str], command: str = "data") -> int:
    """Parse ``argv`` (without the command name) and run the ``synth`` action.

    Returns:
        Process exit status (0 on success).
    """
    parser = argparse.ArgumentParser(prog=f"python -m cdkd {command}", description=__doc__.splitlines()[0].replace("``", ""))
    actions = parser.add_subparsers(dest="action", required=True)
    synth = actions.add_parser("synth", help="generate the synthetic people dataset (COCO + MPII formats)")
    synth.add_argument("--out", default="data/synth", help="output folder (default: data/synth)")
    synth.add_argument("--train", type=int, default=4000, help="training PERSONS (default: 4000)")
    synth.add_argument("--val", type=int, default=1000, help="validation PERSONS (default: 1000)")
    synth.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (default: 0)")
    synth.add_argument("--workers", type=int, default=1, help="drawing processes; output does not depend on it")
    args = parser.parse_args(argv)

    from cdkd.data.synthetic import synthesize

    summary = synthesize(args.out, train=args.train, val=args.val, seed=args.seed, workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 0
