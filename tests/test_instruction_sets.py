"""The CPU kernels under every instruction set this machine can run, not only its best.

The C++ CPU kernels are compiled once per instruction set (DEFAULT, AVX2, AVX512) and
picked at run time the way ATen picks its own (``ATEN_CPU_CAPABILITY``). CI machines
are AVX2 or AVX512, so the correctness suites run here, in a subprocess, under each
lower instruction set too. For AVX2, oneDNN and MKL are capped at AVX2 as well: the
convolutions and matmuls of an AVX2 machine round differently from an AVX512 one's,
which is what the training-step test must withstand.

By hand, on any machine:

    ATEN_CPU_CAPABILITY=default python -m pytest tests/ -q
    ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python -m pytest tests/ -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_cpu_backend

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["DEFAULT", "AVX2", "AVX512"]
# What each instruction set needs in the environment, beyond ATEN_CPU_CAPABILITY.
EXTRA_ENV = {
    "DEFAULT": {},
    "AVX2": {"DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "AVX512": {},
}
# The suites that run every CPU kernel against the float64 oracle, and the training
# step that once failed on AVX2 only.
KERNEL_SUITES = [
    "tests/test_losses.py",
    "tests/test_sampling.py",
    "tests/test_elbo.py",
    "tests/test_discretized_logistic_mixture.py",
    "tests/test_mixed_precision.py",
    "tests/test_hardening_numerics.py",
    "tests/test_train.py::test_float32_fused_step_matches_the_float64_reference",
    "tests/test_train.py::test_fused_and_torch_backends_give_the_same_step",
]
IN_SUBPROCESS = "VK_INSTRUCTION_SET_RUN"


def _native_isa() -> str:
    from vae_kernels import ops

    return ops.cpu_kernel_isa()


def _lower_isas() -> list[str]:
    if os.environ.get(IN_SUBPROCESS):
        return []
    try:
        native = _native_isa()
    except Exception:  # the extension is not built: requires_cpu_backend skips
        return []
    return ORDER[: ORDER.index(native)] if native in ORDER else []


def _environment(isa: str) -> dict[str, str]:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower(), **EXTRA_ENV[isa])
    env[IN_SUBPROCESS] = isa
    # This process's inductor cache holds code built for its own instruction set, which
    # fails to compile under another: the subprocess's conftest picks one of its own.
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return env


@requires_cpu_backend
def test_the_kernels_follow_atens_choice_of_instruction_set():
    import torch

    assert _native_isa() == torch.backends.cpu.get_cpu_capability()


@requires_cpu_backend
@pytest.mark.parametrize("isa", _lower_isas() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no instruction set below this machine's (or already in a subprocess run)"))])
def test_kernel_suites_pass_under_a_lower_instruction_set(isa):
    env = _environment(isa)
    selected = subprocess.run(
        [sys.executable, "-c", "from vae_kernels import ops; print(ops.cpu_kernel_isa())"],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert selected.stdout.strip() == isa, selected.stdout + selected.stderr
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_SUITES],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )
    assert result.returncode == 0, (
        f"the kernel suites fail under ATEN_CPU_CAPABILITY={isa.lower()}:\n"
        + result.stdout[-6000:] + result.stderr[-2000:]
    )
