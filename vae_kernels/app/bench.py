"""``vae-kernels bench``: the benchmark suite's quick report.

Runs ``benchmarks/run.py --quick`` of the source checkout this package is installed
from (an editable install), writing into ``--out`` (default: a new temporary
directory), never into the committed results. The suite is not part of an installed
wheel: without a checkout this command says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import vae_kernels

__all__ = ["benchmark_script", "add_arguments", "run"]


def benchmark_script() -> Optional[Path]:
    """``benchmarks/run.py`` beside the installed package, if this is a source checkout."""
    script = Path(vae_kernels.__file__).resolve().parent.parent / "benchmarks" / "run.py"
    return script if script.is_file() else None


# Options this parser does not know go to benchmarks/run.py (cli.main collects them).
PASSES_UNKNOWN_OPTIONS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Other options go to benchmarks/run.py, e.g. `--ops elbo_bernoulli --no-plots` "
        "(see `python benchmarks/run.py --help`)."
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the report goes (default: a new temporary directory)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``bench`` subcommand: the status of ``benchmarks/run.py``."""
    script = benchmark_script()
    if script is None:
        raise FileNotFoundError(
            "the benchmark suite (benchmarks/run.py) is not installed with the package; "
            "run this from a source checkout installed with `pip install -e .`"
        )
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vae-kernels-bench-"))
    extra = [arg for arg in getattr(args, "extra", []) if arg != "--"]
    command = [sys.executable, str(script), "--quick", "--out", str(out), *extra]
    print(f"running {' '.join(command)}", flush=True)
    status = subprocess.run(command, cwd=script.parent.parent).returncode
    if status == 0:
        print(f"report in {out}/")
    return status
