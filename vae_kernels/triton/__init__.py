"""The Triton backend of vae_kernels: every op as Triton kernels with hand-written
backward kernels, registered with ``torch.library.triton_op`` in the op namespace
``vae_kernels_triton`` (see ``ops.py``).

Runs on CUDA tensors, and on CPU tensors through the Triton interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported. ``backend`` is the object
``vae_kernels.backends`` dispatches to for ``backend="triton"``.

Modules: ``math`` (per-element formulas), ``layout`` (tensor views and the tile
rule), ``sampling``, ``losses`` and ``mixture`` (the discretized logistic mixture
likelihood) (kernels and launchers), ``ops`` (registration), ``device`` (where the
kernels can run).
"""

from .device import interpreter_active, unavailable_reason
from .ops import NAMESPACE, backend

__all__ = ["NAMESPACE", "backend", "interpreter_active", "unavailable_reason"]
