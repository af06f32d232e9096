"""Which implementation runs a call: the ``backend=`` argument of the public API.

Every backend is an object (a module or an ``ops.OpsBackend``) exposing the same six functions (``reparameterize``,
``gaussian_kl``, ``bernoulli_nll``, ``gaussian_nll``, ``mse_loss``, ``elbo_loss``)
with already-validated arguments:

- ``"torch"``: ``vae_kernels.reference``, eager PyTorch (also the test oracle).
- ``"cpu"``: ``vae_kernels.ops.cpu``, the C++ kernels registered as torch custom ops.
- ``"triton"``: ``vae_kernels.triton.backend``, the Triton kernels: CUDA tensors, or
  CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1`` set before triton
  is imported; an error otherwise).
- ``"auto"``: ``"cpu"`` for CPU tensors when the extension is built, ``"triton"`` for
  CUDA tensors when triton is installed, else ``"torch"``.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING, Optional

import torch

from . import reference

if TYPE_CHECKING:
    from . import ops

BACKENDS = ("auto", "cpu", "torch", "triton", "cuda")

# Whether triton can be imported (found without importing it: see _triton_unavailable_reason).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _native_ops() -> "ops.OpsBackend | None":
    from . import ops  # imported lazily: it loads the compiled library

    return ops.cpu if ops.LIBRARY_ERROR is None else None


def _triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why ``backend="triton"`` cannot run on ``device``, or None if it can."""
    if not _TRITON_INSTALLED:
        return "triton is not installed"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # Checked before importing vae_kernels.triton: importing it imports triton,
        # after which setting TRITON_INTERPRET=1 comes too late.
        return (
            "on CPU tensors the Triton kernels run only through the Triton interpreter: "
            "set the environment variable TRITON_INTERPRET=1 before triton is imported"
        )
    from . import triton as triton_backend

    return triton_backend.unavailable_reason(device)


def _triton_ops(device: torch.device) -> "ops.OpsBackend":
    reason = _triton_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"backend='triton' cannot run on {device} tensors: {reason}")
    from . import triton as triton_backend

    return triton_backend.backend


def available_backends() -> list[str]:
    """The backends that can run on this machine (``"auto"`` excluded)."""
    names = ["torch"]
    if _native_ops() is not None:
        names.insert(0, "cpu")
    triton_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if _triton_unavailable_reason(triton_device) is None:
        names.insert(-1, "triton")
    return names


def resolve(backend: str, device: torch.device) -> "ModuleType | ops.OpsBackend":
    """The backend module for ``backend`` and tensors on ``device``, or a clear error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return reference
    if backend == "auto":
        native = _native_ops()
        if device.type == "cpu" and native is not None:
            return native
        if device.type == "cuda" and _triton_unavailable_reason(device) is None:
            return _triton_ops(device)
        return reference
    if backend == "triton":
        return _triton_ops(device)
    if backend == "cpu":
        native = _native_ops()
        if native is None:
            from . import ops

            raise RuntimeError(
                "backend='cpu' needs the compiled vae_kernels extension, which failed to "
                f"load: {ops.LIBRARY_ERROR}. Reinstall with "
                "`pip install --no-build-isolation .`, or use backend='torch'."
            )
        if device.type != "cpu":
            raise ValueError(
                f"backend='cpu' runs on CPU tensors, but the tensors are on {device}; "
                "use backend='auto' or move them with .cpu()"
            )
        return native
    raise RuntimeError(
        f"backend={backend!r} is not available in this version of vae_kernels; "
        f"available: {available_backends()}"
    )
