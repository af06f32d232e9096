"""ctypes access to a library built by build.py: every launcher of csrc/cuda/launchers.h
on CPU torch tensors (device memory is host memory in the emulation), and the enums of
launchers.h read from the header itself."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence
from pathlib import Path

import torch

LAUNCHERS_H = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "launchers.h"
LOSSES_H = Path(__file__).resolve().parents[2] / "csrc" / "math" / "losses.h"

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
KERNEL_CHUNK = 8192  # kLossChunk


def _enum(name: str, header: Path) -> dict[str, int]:
    pattern = r"enum class " + name + r"\s*:\s*\w+\s*\{(.*?)\};"
    body = re.search(pattern, header.read_text(), re.DOTALL)
    return {k: int(v) for k, v in re.findall(r"(k\w+)\s*=\s*(\d+)", body.group(1))}


# {"kBernoulliLogits": 2, ...}: every loss, not the count
LOSS_KINDS = {k: v for k, v in _enum("LossKind", LOSSES_H).items() if k != "kNumKinds"}
assert _enum("DType", LAUNCHERS_H) == {"kFloat32": 0, "kFloat64": 1, "kFloat16": 2, "kBFloat16": 3}
assert f"kLossChunk = {KERNEL_CHUNK};" in LAUNCHERS_H.read_text()


def loss_chunks_per_row(row_len: int) -> int:
    return 1 if row_len <= KERNEL_CHUNK else -(-row_len // KERNEL_CHUNK)


def local_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float16 else dtype


def _ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.device.type == "cpu" and t.is_contiguous()
    return t.data_ptr() or None


def _strides(t: torch.Tensor):
    """t's strides (in elements) as an int64[4] for ctypes."""
    assert t.device.type == "cpu" and t.dim() == 4
    return ctypes.cast((_I64 * 4)(*t.stride()), _V)


class LaunchError(RuntimeError):
    pass


_V, _I64, _D, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
_SIGNATURES = {
    "vk_launch_loss": [_I, _V, _I, _D, _I64, _I64, _V, _V, _V, _D, _V, _V],
    "vk_launch_finish_rows": [_I, _V, _I64, _V, _I64, _D, _I64, _D, _V, _V, _V],
    "vk_launch_finish_total": [_I, _V, _I64, _V, _I64, _D, _D, _V, _V, _V],
    "vk_launch_reparameterize": [_I, _V, _V, _V, _V, _I64, _I64, _D],
    "vk_launch_reparameterize_backward": [_I, _V, _V, _V, _V, _V, _I64, _I64, _D],
    "vk_launch_reparameterize_philox": [_I, _V, _V, _V, _V, _I64, _I64, _D],
    "vk_launch_reparameterize_philox_backward": [_I, _V, _V, _V, _V, _V, _I64, _I64, _D],
    "vk_launch_loss_backward": [_I, _V, _V, _I64, _I64, _V, _I64, _I64],
    "vk_launch_discretized_logistic_mixture": [_I, _I, _I, _I, _I64, _I64, _I64, _I64, _V, _V,
                                               _V, _V, _V, _V, _D, _V, _V, _V],
    "vk_float_to_half": [_V, _V, _I64],
    "vk_half_to_float": [_V, _V, _I64],
    "vk_float_to_bfloat16": [_V, _V, _I64],
    "vk_bfloat16_to_float": [_V, _V, _I64],
    "vk_selftest_indices": [_V, _V, _V],
    "vk_selftest_reverse": [_I, _I, _V, _V],
    "vk_selftest_warp": [_V, _V, _V, _I],
    "vk_selftest_launch_errors": [_V],
}


class Kernels:
    """The launchers of one built library; each raises LaunchError on a nonzero cudaError_t."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.lib = ctypes.CDLL(self.path)
        for name, argtypes in _SIGNATURES.items():
            getattr(self.lib, name).argtypes = argtypes
            returns_error = (name.startswith(("vk_launch_", "vk_selftest_"))
                             and name != "vk_selftest_launch_errors")
            getattr(self.lib, name).restype = _I if returns_error else None

    def _call(self, name: str, *args) -> None:
        code = getattr(self.lib, name)(*args)
        if code:
            raise LaunchError(f"{name} returned cudaError_t {code}")

    def loss(self, dtype, kind: str, inputs: Sequence[torch.Tensor], *, rows: int, row_len: int,
             logvar_value: float = 0.0, elementwise=None, grads: Sequence = (), grad_scale=1.0,
             partial_sums=None, flags=None, input_dtypes=None) -> None:
        """input_dtypes: each input's dtype where they mix (dtype is then float32)."""
        ins = (_V * 4)(*[_ptr(t) for t in inputs])
        gs = (_V * 4)(*[_ptr(t) for t in grads])  # None: that gradient is not asked for
        codes = None
        if input_dtypes is not None:
            codes = (ctypes.c_int * 4)(*[DTYPE_CODES[d] for d in input_dtypes])
        self._call("vk_launch_loss", DTYPE_CODES[dtype],
                   None if codes is None else ctypes.cast(codes, _V), LOSS_KINDS[kind],
                   logvar_value, rows, row_len, ctypes.cast(ins, _V), _ptr(elementwise),
                   ctypes.cast(gs, _V), grad_scale, _ptr(partial_sums), _ptr(flags))

    def finish_rows(self, dtype, partials_a, chunks_a, partials_b, chunks_b, beta, rows, scale,
                    out_total=None, out_a=None, out_b=None) -> None:
        self._call("vk_launch_finish_rows", DTYPE_CODES[dtype], _ptr(partials_a), chunks_a,
                   _ptr(partials_b), chunks_b, beta, rows, scale, _ptr(out_total), _ptr(out_a),
                   _ptr(out_b))

    def finish_total(self, dtype, partials_a, count_a, partials_b, count_b, beta, scale,
                     out_total=None, out_a=None, out_b=None) -> None:
        self._call("vk_launch_finish_total", DTYPE_CODES[dtype], _ptr(partials_a), count_a,
                   _ptr(partials_b), count_b, beta, scale, _ptr(out_total), _ptr(out_a),
                   _ptr(out_b))

    # std_exponent: 0.5 for a log-variance, 1.0 for a log-sigma (csrc/math/sampling.h).
    def reparameterize(self, dtype, mu, logvar, eps, z, numel, num_samples,
                       std_exponent=0.5) -> None:
        self._call("vk_launch_reparameterize", DTYPE_CODES[dtype], _ptr(mu), _ptr(logvar),
                   _ptr(eps), _ptr(z), numel, num_samples, std_exponent)

    def reparameterize_backward(self, dtype, grad_z, logvar, eps, grad_mu, grad_logvar, numel,
                                num_samples, std_exponent=0.5) -> None:
        self._call("vk_launch_reparameterize_backward", DTYPE_CODES[dtype], _ptr(grad_z),
                   _ptr(logvar), _ptr(eps), _ptr(grad_mu), _ptr(grad_logvar), numel, num_samples,
                   std_exponent)

    def reparameterize_philox(self, dtype, mu, logvar, seed, z, numel, num_samples,
                              std_exponent=0.5) -> None:
        self._call("vk_launch_reparameterize_philox", DTYPE_CODES[dtype], _ptr(mu), _ptr(logvar),
                   _ptr(seed), _ptr(z), numel, num_samples, std_exponent)

    def reparameterize_philox_backward(self, dtype, grad_z, logvar, seed, grad_mu, grad_logvar,
                                       numel, num_samples, std_exponent=0.5) -> None:
        self._call("vk_launch_reparameterize_philox_backward", DTYPE_CODES[dtype], _ptr(grad_z),
                   _ptr(logvar), _ptr(seed), _ptr(grad_mu), _ptr(grad_logvar), numel,
                   num_samples, std_exponent)

    def loss_backward(self, dtype, local_grad, grad_output, stride_elem, stride_row, out, rows,
                      row_len) -> None:
        self._call("vk_launch_loss_backward", DTYPE_CODES[dtype], _ptr(local_grad),
                   _ptr(grad_output), stride_elem, stride_row, _ptr(out), rows, row_len)

    def discretized_logistic_mixture(self, params, x, *, num_bits, pixel_nll=None, grads=None,
                                     grad_scale=1.0, sums=None, flag=None,
                                     grad_workspace=None) -> None:
        """params (B, P, H, W) and x (B, C, H, W) with any strides, read in place; the
        outputs contiguous (None: not asked for)."""
        b, c, h, w = x.shape
        components = params.shape[1] // (10 if c == 3 else 3)
        self._call("vk_launch_discretized_logistic_mixture", DTYPE_CODES[params.dtype],
                   DTYPE_CODES[x.dtype], c, components, num_bits, b, h, w,
                   params.data_ptr() or None, _strides(params), x.data_ptr() or None,
                   _strides(x), _ptr(pixel_nll), _ptr(grads), grad_scale, _ptr(sums), _ptr(flag),
                   _ptr(grad_workspace))

    def convert(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The emulation's float32 <-> float16/bfloat16 conversions (values' dtype to dtype)."""
        narrow = dtype if values.dtype == torch.float32 else values.dtype
        name = {torch.float16: "half", torch.bfloat16: "bfloat16"}[narrow]
        src = values.contiguous()
        out = torch.empty(src.shape, dtype=dtype)
        fn = f"vk_float_to_{name}" if values.dtype == torch.float32 else f"vk_{name}_to_float"
        getattr(self.lib, fn)(_ptr(src), _ptr(out), src.numel())
        return out
