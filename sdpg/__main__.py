"""``python -m sdpg train|ablate|sweep|report|eval ...``: the console scripts as a module, e.g. for
``torchrun --nproc_per_node 8 -m sdpg train config.yaml``."""

import sys

from sdpg import cli

COMMANDS = {
    "train": cli.train_main,
    "ablate": cli.ablate_main,
    "sweep": cli.sweep_main,
    "report": cli.report_main,
    "eval": cli.eval_main,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m sdpg {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(COMMANDS[sys.argv[1]](sys.argv[2:]))
