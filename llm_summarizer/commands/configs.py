"""The ready configs shipped in the package: llm-summarizer configs [--show NAME]

Each is used by name (`llm-summarizer train --config demo`); a path to your own YAML file works the
same way and wins over a name. `--show NAME` prints one, to copy and edit.
"""

from __future__ import annotations

import argparse

from ..config_loading import config_description, shipped_configs
from ..errors import UserError
from . import boot

PROG = "llm-summarizer configs"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = boot.parser(prog, __doc__)
    ap.add_argument("--show", metavar="NAME", help="print this config's YAML")
    return ap


def run(args, _cfg) -> int:
    shipped = shipped_configs()
    if args.show:
        name = args.show.removesuffix(".yaml")
        if name not in shipped:
            raise UserError(f"--show {args.show}: not a ready config; one of {', '.join(shipped)}")
        print(shipped[name].read_text(encoding="utf-8"), end="")
        return 0
    width = max(map(len, shipped))
    for name, path in shipped.items():
        print(f"{name:<{width}}  {config_description(path)}")
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return boot.run_command(build_parser(prog), run, argv)
