"""Kernel launches that torch.compile can see, and that also run in the interpreter.

On a GPU every launch goes through ``torch.library.wrap_triton``: inside a
``triton_op`` this is what lets torch.compile trace into the kernels (and lets
``torch._library.triton`` find them by the ``wrap_triton(kernel)`` call pattern, for
its compile caches).

Under the Triton interpreter (``TRITON_INTERPRET=1``, CPU tests) a kernel is a Python
function over real CPU tensors, which no tracer can follow. There the ops stay opaque
to torch.compile instead (``keep_opaque_under_interpreter`` in ``ops.py``), and a
launch on FakeTensors (shape propagation, which only needs the op's allocations) is
skipped.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from triton.runtime.interpreter import InterpretedFunction


def is_interpreted(kernel: Any) -> bool:
    return isinstance(kernel, InterpretedFunction)


class _InterpretedLaunch:
    def __init__(self, kernel: InterpretedFunction) -> None:
        self.kernel = kernel

    def __getitem__(self, grid) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            if any(isinstance(a, FakeTensor) for a in (*args, *kwargs.values())):
                return  # shape propagation: the outputs are already allocated
            self.kernel[grid](*args, **kwargs)

        return launch


def wrap_triton(kernel: Any) -> Any:
    """``torch.library.wrap_triton(kernel)``, or the interpreter launch described above."""
    if is_interpreted(kernel):
        return _InterpretedLaunch(kernel)
    return torch.library.wrap_triton(kernel)
