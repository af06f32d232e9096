"""Runs this directory's tests in a fresh Python process with TRITON_INTERPRET=1, when
they cannot run in this one: no GPU, and triton was imported before conftest.py could
set TRITON_INTERPRET=1 (e.g. by a test module importing torch._dynamo). Skipped when
the tests run in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from triton_testing import HAS_CUDA, KERNELS_RUN_IN_PROCESS, TRITON_INSTALLED


@pytest.mark.skipif(KERNELS_RUN_IN_PROCESS, reason="the Triton tests run in this process")
@pytest.mark.skipif(HAS_CUDA or not TRITON_INSTALLED, reason="only for the CPU interpreter")
def test_triton_tests_in_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here)],
        cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
