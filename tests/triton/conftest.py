"""Run the Triton kernels on CPU through the Triton interpreter when there is no GPU.

TRITON_INTERPRET=1 takes effect only if it is set when triton is first imported
(Triton's own library functions, such as tl.randn, are compiled-only otherwise). So,
while this directory is collected and if nothing has imported triton yet, this file
sets it, imports triton and the vae_kernels Triton kernels (now interpreted), and puts
the environment back as it was, so that the rest of the suite sees no change: the
tests in this directory get TRITON_INTERPRET=1 back from an autouse fixture.

If something imported triton earlier (``import torch._dynamo`` does), the tests here
skip in this process and ``test_triton_subprocess.py`` runs this directory in a fresh
Python process with TRITON_INTERPRET=1 instead.
"""

import importlib.util
import os
import sys

import pytest
import torch


def _import_kernels_for_the_interpreter() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import vae_kernels.triton  # noqa: F401  (imports triton)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


USE_INTERPRETER = not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
if USE_INTERPRETER and "triton" not in sys.modules:
    _import_kernels_for_the_interpreter()


@pytest.fixture(autouse=True)
def _triton_interpreter_environment(monkeypatch):
    """backend="triton" accepts CPU tensors only while TRITON_INTERPRET=1 is set."""
    if USE_INTERPRETER:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
