"""Which implementation runs a call: the ``backend=`` argument of the public API.

Every backend is an object (a module or an ``ops.OpsBackend``) exposing the same six
functions (``reparameterize``, ``gaussian_kl``, ``bernoulli_nll``, ``gaussian_nll``,
``mse_loss``, ``elbo_loss``), called with already-validated arguments:

- ``"torch"``: ``vae_kernels.reference``, eager PyTorch (also the test oracle).
- ``"cpu"``: ``vae_kernels.ops.cpu``, the C++ kernels for CPU tensors.
- ``"cuda"``: ``vae_kernels.ops.cuda``, the C++ CUDA kernels (the same ops; built only
  against a CUDA torch with nvcc present).
- ``"triton"``: ``vae_kernels.triton.backend``, the Triton kernels: CUDA tensors, or
  CPU tensors through the Triton interpreter (``TRITON_INTERPRET=1`` set before triton
  is imported; an error otherwise).
- ``"auto"``: for CPU tensors ``"cpu"``; for CUDA tensors ``"triton"``, else ``"cuda"``;
  ``"torch"`` where none of them can run.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Union

import torch

from . import reference

if TYPE_CHECKING:
    from .op_autograd import OpsBackend

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")

# Found without importing triton: see _triton_unavailable_reason.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _native_unavailable_reason(device_type: str) -> Optional[str]:
    """Why the C++ kernels cannot run on ``device_type`` tensors, or None if they can."""
    from . import ops  # imported lazily: it loads the compiled library

    if ops.LIBRARY_ERROR is not None:
        return (
            f"the compiled vae_kernels extension failed to load: {ops.LIBRARY_ERROR}. "
            "Reinstall with `pip install --no-build-isolation .`"
        )
    if device_type == "cuda" and not ops.has_cuda_kernels():
        return (
            "the extension was built without its CUDA kernels (CPU-only torch, or no nvcc at "
            "build time); rebuild with a CUDA torch and nvcc on PATH"
        )
    return None


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


def _backend_object(name: str) -> "Union[ModuleType, OpsBackend]":
    if name == "torch":
        return reference
    if name == "triton":
        from . import triton as triton_backend

        return triton_backend.backend
    from . import ops

    return ops.cpu if name == "cpu" else ops.cuda


def _unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """Why backend ``name`` cannot run on ``device`` tensors, or None if it can."""
    if name == "torch":
        return None
    if name == "triton":
        return _triton_unavailable_reason(device)
    if device.type != name:  # "cpu" and "cuda" run on tensors of their own device type
        return f"it runs on {name.upper()} tensors; move them with .to('{name}'), or use 'auto'"
    return _native_unavailable_reason(name)


def available_backends() -> list[str]:
    """The backends that can run on this machine (``"auto"`` excluded)."""
    cuda = torch.device("cuda") if torch.cuda.is_available() else None
    triton_device = cuda or torch.device("cpu")
    candidates = [("cpu", torch.device("cpu")), ("cuda", cuda), ("triton", triton_device)]
    names = [n for n, d in candidates if d is not None and _unavailable_reason(n, d) is None]
    return names + ["torch"]


# resolve()'s answers that cannot change while the process runs: the compiled library
# is loaded once. (Triton's depend on TRITON_INTERPRET and are looked up every time.)
_NATIVE_RESOLVED: dict = {}


def resolve(backend: str, device: torch.device) -> "Union[ModuleType, OpsBackend]":
    """The backend object for ``backend`` and tensors on ``device``, or a clear error."""
    key = (backend, device)
    if key in _NATIVE_RESOLVED:
        return _NATIVE_RESOLVED[key]
    resolved = _resolve(backend, device)
    if backend in ("auto", "cpu", "cuda") and resolved is not reference:
        if backend != "auto" or device.type == "cpu":  # auto on CUDA may pick Triton
            _NATIVE_RESOLVED[key] = resolved
    return resolved


def _resolve(backend: str, device: torch.device) -> "Union[ModuleType, OpsBackend]":
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        preference = {"cpu": ["cpu"], "cuda": ["triton", "cuda"]}.get(device.type, [])
        for name in preference:
            if _unavailable_reason(name, device) is None:
                return _backend_object(name)
        return reference
    reason = _unavailable_reason(backend, device)
    if reason is None:
        return _backend_object(backend)
    if backend in ("cpu", "cuda") and device.type != backend:
        raise ValueError(f"backend={backend!r} cannot run on {device} tensors: {reason}")
    raise RuntimeError(f"backend={backend!r} cannot run on {device} tensors: {reason}")
