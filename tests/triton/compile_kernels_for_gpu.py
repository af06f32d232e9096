"""Compile the Triton kernels of vae_kernels for an H100 (sm_90) without a GPU:
AST -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin (with the ptxas bundled in triton).

The interpreter runs the kernels' Python, not Triton's compiler, so this catches
what only a GPU build would reject (types, layouts, unsupported operations).
Run in a process where TRITON_INTERPRET is unset (test_triton_gpu_compile.py does):
``python tests/triton/compile_kernels_for_gpu.py [--all]``; ``--all`` compiles every
dtype x loss x reduction variant (~130 kernels), the default a cover of each.
"""

import itertools
import os
import sys
import time
assert os.environ.get("TRITON_INTERPRET") != "1", "compiling needs TRITON_INTERPRET unset"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource  # noqa: E402

from vae_kernels.triton import losses, mixture, sampling  # noqa: E402

FLOAT_ARGS = {"fixed_logvar_hi", "fixed_logvar_lo", "second_weight_hi", "second_weight_lo",
              "log_half_bins_hi", "log_half_bins_lo"}
target = GPUTarget("cuda", 90, 32)

def compile_kernel(kernel, dtype, constexprs, int_type="i32", ptr_types=None, num_warps=4):
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = (ptr_types or {}).get(name, "*" + dtype)
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = int_type
    src = ASTSource(kernel, sig, constexprs)
    t = time.time()
    compiled = triton.compile(src, target=target, options={"num_warps": num_warps})
    assert compiled.asm["cubin"], kernel.fn.__name__
    return time.time() - t

ALL = "--all" in sys.argv
failures = 0


def check(label, *args, **kwargs):
    global failures
    try:
        dt = compile_kernel(*args, **kwargs)
        print(f"ok   {label} ({dt:.1f}s)")
    except Exception as e:
        failures += 1
        print(f"FAIL {label}: {type(e).__name__}: {str(e)[:2000]}")

PARTIAL_PTRS = lambda acc: {"partials_ptr": "*" + acc, "out_of_range_ptr": "*i32"}
for index, (dtype, kind, reduction, int_type) in enumerate(itertools.product(
        ["fp32", "bf16", "fp16", "fp64"], range(7), [0, 1, 2], ["i32", "i64"])):
    if int_type == "i64" and (dtype != "bf16" or reduction != 1):
        continue
    # The default cover: every loss kind, each dtype and reduction at least once.
    if not ALL and (dtype, reduction) not in {("fp32", kind % 3), ("bf16", (kind + 1) % 3),
                                              ("fp64", (kind + 2) % 3)}:
        continue
    n_inputs = {1: 4, 5: 3}.get(kind, 2)
    acc = "fp64" if dtype == "fp64" else "fp32"
    constexprs = dict(KIND=kind, NUM_INPUTS=n_inputs, WRITE_GRAD0=True, WRITE_GRAD1=True,
                      WRITE_GRAD2=n_inputs > 2, WRITE_GRAD3=n_inputs > 3, WRITE_LOSS=reduction == 0,
                      PARTIALS=reduction, CHECK_RANGE0=kind == 3, CHECK_RANGE1=kind in (2, 3),
                      BLOCK_ROWS=4, BLOCK_COLS=256)
    ptrs = PARTIAL_PTRS(acc)
    if dtype == "fp16":  # float16's local gradients are float32
        ptrs.update({f"grad{k}_ptr": "*fp32" for k in range(4)})
    check(f"elementwise_loss {dtype} kind={kind} reduction={reduction} {int_type}",
          losses.elementwise_loss_kernel, dtype, constexprs, int_type, ptrs, 4)
for dtype in ["fp32", "bf16", "fp16", "fp64"] if ALL else ["bf16", "fp64"]:
    acc = "fp64" if dtype == "fp64" else "fp32"
    ptrs = {"first_ptr": "*" + acc, "second_ptr": "*" + acc}
    for has_second in (False, True):
        check(f"partials_per_row {dtype} second={has_second}", losses.partials_per_row_kernel, dtype,
              dict(HAS_SECOND=has_second, BLOCK_ROWS=64, BLOCK_COLS=64), "i32", ptrs)
        check(f"partials_total {dtype} second={has_second}", losses.partials_total_kernel, dtype,
              dict(HAS_SECOND=has_second, BLOCK=1024), "i32", ptrs)
    for upstream in range(3):
        local = {"local_ptr": "*fp32"} if dtype == "fp16" else None
        check(f"loss_backward {dtype} upstream={upstream}", losses.loss_backward_kernel, dtype,
              dict(UPSTREAM=upstream, BLOCK_ROWS=1, BLOCK_COLS=4096), "i32", local, 8)
    for kernel in (sampling.reparameterize_kernel, sampling.reparameterize_backward_kernel):
        check(f"{kernel.fn.__name__} {dtype}", kernel, dtype, dict(BLOCK_ROWS=16, BLOCK_COLS=64))
    for kernel in (sampling.reparameterize_philox_kernel, sampling.reparameterize_philox_backward_kernel):
        for int_type in ("i32", "i64"):
            check(f"{kernel.fn.__name__} {dtype} {int_type}", kernel, dtype, dict(BLOCK_ROWS=16, BLOCK_COLS=64),
                  int_type, {"seed_ptr": "*i64"})
# The mixture likelihood: params, x, gradient, loss and partial-sum dtypes; C = 3 and 1.
for params, x, grad, loss, acc, channels, with_grad, write, int_type in [
    ("fp32", "fp32", "fp32", "fp32", "fp32", 3, True, True, "i32"),
    ("fp32", "fp32", "fp32", "fp32", "fp32", 1, False, False, "i64"),
    ("bf16", "fp32", "bf16", "fp32", "fp32", 3, True, False, "i32"),
    ("fp16", "fp16", "fp32", "fp16", "fp32", 1, True, True, "i32"),
    ("fp64", "fp32", "fp64", "fp64", "fp64", 3, True, True, "i64"),
]:
    check(f"mixture_nll params={params} x={x} C={channels} grad={with_grad} {int_type}",
          mixture.mixture_nll_kernel, params,
          dict(CHANNELS=channels, WITH_GRAD=with_grad, WRITE_PIXEL_NLL=write, BLOCK=128), int_type,
          {"params_ptr": "*" + params, "x_ptr": "*" + x, "grad_ptr": "*" + grad,
           "pixel_nll_ptr": "*" + loss, "partials_ptr": "*" + acc, "out_of_range_ptr": "*i32"})
# The smallest tile (1 x 1), as for a 0-d tensor.
check("elementwise_loss 1x1 tile", losses.elementwise_loss_kernel, "fp32",
      dict(KIND=0, NUM_INPUTS=2, WRITE_GRAD0=True, WRITE_GRAD1=True, WRITE_GRAD2=False, WRITE_GRAD3=False,
           WRITE_LOSS=False, PARTIALS=2, CHECK_RANGE0=False, CHECK_RANGE1=False, BLOCK_ROWS=1, BLOCK_COLS=1),
      "i32", PARTIAL_PTRS("fp32"), 1)
print("failures:", failures)
sys.exit(1 if failures else 0)
