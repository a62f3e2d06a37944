"""Command line: ``python -m cdkd <command> ...`` (also installed as ``cdkd``).

Each command lives beside the code it drives and is imported only when called, so that
``python -m cdkd flops`` does not pay for the data or training imports.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "flops": ("cdkd.flops", "Parameters and multiply-accumulates (exact, and the paper's convention)"),
    "data": ("cdkd.data.cli", "Generate the synthetic people dataset ('data synth')"),
    "train": ("cdkd.engine.cli", "Train a teacher, a baseline student or a CDKD student"),
    "eval": ("cdkd.engine.cli", "Evaluate a checkpoint (COCO AP or MPII PCKh)"),
    "diagnose": ("cdkd.diagnose", "Measure each Eq. 8 term's share of the student's update"),
    "export": ("cdkd.export", "Export a student to ONNX or TorchScript"),
    "reproduce": ("cdkd.reproduce", "Run the whole reproduction by executing the notebooks"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m cdkd <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cdkd: unknown command '{name}'; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest, command=name) or 0)


if __name__ == "__main__":
    sys.exit(main())
