"""``python -m sdpg train|ablate|sweep|report|eval ...``: the console scripts as a module, e.g. for
``torchrun --nproc_per_node 8 -m sdpg train config.yaml``."""

import sys

from sdpg import commands

COMMANDS = {
    "train": commands.train_main,
    "ablate": commands.ablate_main,
    "sweep": commands.sweep_main,
    "report": commands.report_main,
    "eval": commands.eval_main,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m sdpg {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(COMMANDS[sys.argv[1]](sys.argv[2:]))
