"""Which implementation runs a call: the ``backend=`` argument of the public API.

Every backend is an object (a module or an ``ops.OpsBackend``) exposing the same six functions (``reparameterize``,
``gaussian_kl``, ``bernoulli_nll``, ``gaussian_nll``, ``mse_loss``, ``elbo_loss``)
with already-validated arguments:

- ``"torch"``: ``vae_kernels.reference``, eager PyTorch (also the test oracle).
- ``"cpu"``: ``vae_kernels.ops.cpu``, the C++ kernels registered as torch custom ops.
- ``"auto"``: ``"cpu"`` for CPU tensors when the extension is built, else ``"torch"``.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from . import reference

if TYPE_CHECKING:
    from . import ops

BACKENDS = ("auto", "cpu", "torch", "triton", "cuda")


def _native_ops() -> "ops.OpsBackend | None":
    from . import ops  # imported lazily: it loads the compiled library

    return ops.cpu if ops.LIBRARY_ERROR is None else None


def available_backends() -> list[str]:
    """The backends that can run on this machine (``"auto"`` excluded)."""
    names = ["torch"]
    if _native_ops() is not None:
        names.insert(0, "cpu")
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
        return reference
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
