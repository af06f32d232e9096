"""Every Triton kernel compiles for an H100 (sm_90), checked on a machine without a
GPU: the interpreter tests never run Triton's compiler. Runs
compile_kernels_for_gpu.py in a process without TRITON_INTERPRET (kernels compiled,
not interpreted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from triton_testing import TRITON_INSTALLED

SCRIPT = Path(__file__).with_name("compile_kernels_for_gpu.py")


def _nvidia_backend_available() -> bool:
    if not TRITON_INSTALLED:
        return False
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


def _compile(*flags: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *flags], cwd=SCRIPT.parents[2], env=env,
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert "failures: 0" in result.stdout


requires_nvidia_backend = pytest.mark.skipif(
    not _nvidia_backend_available(), reason="triton's NVIDIA backend is not installed"
)


@requires_nvidia_backend
def test_kernels_compile_for_sm90():
    _compile()


@requires_nvidia_backend
@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90():
    _compile("--all")
