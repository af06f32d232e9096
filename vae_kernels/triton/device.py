"""Where the Triton kernels can run: CUDA tensors, or CPU tensors through the Triton
interpreter (``TRITON_INTERPRET=1``, set before triton is first imported)."""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton.language as tl

INTERPRETER_HOWTO = (
    "set the environment variable TRITON_INTERPRET=1 before triton is first imported "
    "(note that importing torch._dynamo or calling torch.compile imports triton)"
)


def triton_imported_for_interpreter() -> bool:
    """True when triton was imported with TRITON_INTERPRET=1 set, so that its kernels,
    and Triton's own library functions (``tl.randn``), run in the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.randn, InterpretedFunction)


def interpreter_active() -> bool:
    """True when Triton kernels run on CPU tensors: TRITON_INTERPRET=1 is set, and was
    set when triton was imported."""
    return os.environ.get("TRITON_INTERPRET") == "1" and triton_imported_for_interpreter()


def unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the Triton kernels cannot run on tensors on ``device``, or None if they can."""
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpreter_active():
            return None
        if os.environ.get("TRITON_INTERPRET") == "1":
            return (
                "the Triton kernels run on CPU tensors only through the Triton interpreter, "
                "but triton was imported before TRITON_INTERPRET=1 was set; "
                + INTERPRETER_HOWTO
            )
        return (
            "the Triton kernels run on CUDA tensors, or on CPU tensors through the Triton "
            "interpreter: " + INTERPRETER_HOWTO
        )
    return f"the Triton kernels run on CUDA tensors (or CPU under the interpreter), not {device}"
