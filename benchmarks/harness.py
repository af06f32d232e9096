"""Measurement: build each provider's step, check it computes the same thing, time it,
and account its memory and op count. Used by ``run.py`` (and, for building steps, by
``test_bench_ops.py``).

CPU timing: ``time.perf_counter_ns`` around each step, providers interleaved round by
round so that noise from other work on the machine hits all of them alike; median and
20/80 percentiles over the rounds.
GPU timing (``time_gpu``): CUDA events recorded on the current stream right before and
after each step, the L2 cache flushed before each step by zeroing a 256 MiB buffer (as
``triton.testing.do_bench`` does), input sets rotated; the step's ``prepare`` (the
forward before a timed backward) runs outside the events, as on CPU. Median and 20/80
percentiles of the per-step device times. do_bench itself is not used: it cannot leave
a per-step forward out of the timed region, and it does not say how many runs it made.
When the host is slower than the device (small sizes), the events also measure the
launch gaps.
CPU memory: torch.profiler allocator events (``profile_memory=True``), summed in time
order inside the step; the peak of that running sum is the step's peak extra memory.
GPU memory: ``torch.cuda.max_memory_allocated`` minus the allocation before the step.
GPU kernels per step: the profiler's device activities of type ``kernel`` (memcpy,
memset and annotation ranges excluded).
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import vae_kernels as vk
from cases import Case, CaseInputs, Op, Size, make_step, provider_function

STEP_MARK = "vk_bench_step"
OP_PREFIXES = ("aten::", "vae_kernels::")
# Rotating GPU input sets are made at least this large in total (H100 L2: 50 MB, H200:
# 60 MB), at most GPU_ROTATION_SETS sets (small sizes stay under it: the L2 flush before
# each step is what keeps their inputs out of the cache).
GPU_ROTATION_BYTES = 256 * 2**20
GPU_ROTATION_SETS = 64
# Zeroed before each timed GPU step to evict the L2 (triton.testing.do_bench's size).
L2_FLUSH_BYTES = 256 * 2**20
# GPU timing effort: (warm-up ms, timed ms of wall time, at least, at most runs).
GPU_EFFORT = {
    "quick": (5, 20, 5, 200),
    "gpu_check": (10, 100, 10, 2000),
    "full": (25, 200, 20, 5000),
}


# ------------------------------------------------------------------ environment


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_model_name()


def device_slug(device: str) -> str:
    """A folder name for the device's results, e.g. ``cpu-amd-epyc``."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    prefix = "gpu" if device == "cuda" else "cpu"
    return f"{prefix}-{slug}"


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def environment(device: str) -> dict:
    """What every row records about where and when it was measured."""
    from vae_kernels import ops

    return {
        "device": device,
        "device_name": device_name(device),
        "cpu_kernel_isa": ops.cpu_kernel_isa() if ops.LIBRARY_ERROR is None else "",
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "triton_version": triton_version(),
        "vae_kernels_version": vk.__version__,
        "python_version": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------ machine load

# Other work on a 2-core machine stalls the timed threads for whole scheduler slices
# (milliseconds), so the full run waits for the machine to be idle before timing a
# case, and records how much CPU other processes used while it was timed.


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class LoadMeter:
    """Cores' worth of CPU time used by other processes between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self._busy, _ = _cpu_jiffies()
        self._own = time.process_time()  # this process, all threads
        self._wall = time.perf_counter()

    def stop(self) -> float:
        busy, _ = _cpu_jiffies()
        wall = time.perf_counter() - self._wall
        others = (busy - self._busy) / self.hz - (time.process_time() - self._own)
        return max(0.0, others / max(wall, 1e-9))


def wait_until_idle(max_wait_s: float, busy_cores: float = 0.2, probe_s: float = 0.3) -> float:
    """Wait (at most ``max_wait_s``) until the whole machine uses less than
    ``busy_cores`` cores; return the seconds waited."""
    started = time.perf_counter()
    hz = os.sysconf("SC_CLK_TCK")
    while time.perf_counter() - started < max_wait_s:
        busy_before, _ = _cpu_jiffies()
        time.sleep(probe_s)
        busy_after, _ = _cpu_jiffies()
        if (busy_after - busy_before) / hz / probe_s < busy_cores:
            break
    return time.perf_counter() - started


# ------------------------------------------------------------------ statistics


def quantile(samples: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int


def summarize(samples_ms: list[float]) -> Timing:
    return Timing(
        statistics.median(samples_ms),
        quantile(samples_ms, 0.2),
        quantile(samples_ms, 0.8),
        len(samples_ms),
    )


# ------------------------------------------------------------- copy bandwidth


class CopyProbe:
    """``dst.copy_(src)`` of 64 MiB buffers (twice this machine's 32 MiB L3, so it
    measures memory, not cache): the bandwidth every case is compared with.

    On CPU one copy is timed in every timing round, interleaved with the cases, so the
    reference bandwidth is measured under the same conditions as the cases (other work
    on the machine included); ``gbps`` is the median over the whole run. On GPU (128 MiB
    moved per copy, twice an H200's 60 MB L2, flushed before each copy anyway) ``run.py``
    calls ``measure`` at the start, before each group and at the end.
    """

    def __init__(self, device: str, nbytes: int = 64 * 2**20) -> None:
        self.device = device
        self.nbytes = nbytes
        self.src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        self.dst = torch.empty_like(self.src)
        self.dst.copy_(self.src)  # first touch of dst's pages
        self.samples_ms: list[float] = []

    def time_once(self) -> None:
        start = time.perf_counter_ns()
        self.dst.copy_(self.src)
        self.samples_ms.append((time.perf_counter_ns() - start) * 1e-6)

    def measure(self, repeats: int = 20) -> float:
        """Bandwidth in GB/s (bytes read + bytes written) of ``repeats`` copies now (on
        GPU: the median device time of copies timed for about 50 ms, L2 flushed before
        each, recorded as one sample)."""
        if self.device == "cuda":
            copy = ((lambda: None), (lambda _: self.dst.copy_(self.src)))
            ms = statistics.median(time_gpu_steps([copy], warmup_ms=10, rep_ms=50, min_runs=10))
            self.samples_ms.append(ms)
            return self._gbps(ms)
        before = len(self.samples_ms)
        for _ in range(repeats):
            self.time_once()
        return self._gbps(statistics.median(self.samples_ms[before:]))

    @property
    def gbps(self) -> float:
        """Median bandwidth over every copy timed so far."""
        return self._gbps(statistics.median(self.samples_ms))

    def _gbps(self, ms: float) -> float:
        return 2 * self.nbytes / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------- providers


@dataclass
class BuiltProvider:
    """A provider's function for one (op, size, dtype) group, ready to time."""

    name: str
    function: Callable
    compile_seconds: Optional[float] = None  # first call (compile + run), compile only
    # Inductor kernels generated for the forward and the backward graph (compile only).
    compiled_kernels: dict = field(default_factory=dict)


def build_provider(provider: str, op: Op, inputs: CaseInputs) -> BuiltProvider:
    """Make the provider's function and run it once forward+backward (the warm-up;
    for ``compile`` this compiles both graphs, timed here, outside the measurements)."""
    function = provider_function(provider, op)
    built = BuiltProvider(provider, function)
    if provider == "compile":
        import torch._inductor.metrics as inductor_metrics

        torch._dynamo.reset()
        # dynamic=False: one static graph per shape, torch.compile's best case.
        built.function = torch.compile(function, dynamic=False)
        inductor_metrics.reset()
        start = time.perf_counter()
        output = built.function(*inputs.args)
        synchronize(inputs.grad_output.device)
        forward_kernels = inductor_metrics.generated_kernel_count
        torch.autograd.grad(output, inputs.grad_inputs, inputs.grad_output)
        synchronize(inputs.grad_output.device)
        built.compile_seconds = time.perf_counter() - start
        built.compiled_kernels = {
            "forward": forward_kernels,
            "backward": inductor_metrics.generated_kernel_count - forward_kernels,
        }
        built.compiled_kernels["forward_backward"] = sum(built.compiled_kernels.values())
    else:
        output = built.function(*inputs.args)
        torch.autograd.grad(output, inputs.grad_inputs, inputs.grad_output)
    return built


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ checking


def check_agreement(op: Op, inputs: CaseInputs, function: Callable, provider: str) -> None:
    """Raise unless ``function`` gives the float64 eager value and gradients (within a
    dtype tolerance): a benchmark must compare like with like."""
    reference_args = [
        a.detach().double().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a
        for a in inputs.args
    ]
    reference_wrt = [a for a in reference_args if torch.is_tensor(a) and a.requires_grad]
    expected = op.eager(*reference_args)
    expected_grads = torch.autograd.grad(expected, reference_wrt, inputs.grad_output.double())

    output = function(*inputs.args)
    grads = torch.autograd.grad(output, inputs.grad_inputs, inputs.grad_output)
    dtype = inputs.grad_output.dtype
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    if provider in ("eager", "compile") and op.eager_tolerance:
        # The formula users call is itself less accurate in this dtype (cases.py says how).
        tolerance = max(tolerance, op.eager_tolerance.get(dtype, tolerance))
    pairs = [("output", output, expected)]
    pairs += [(f"gradient {i}", g, e) for i, (g, e) in enumerate(zip(grads, expected_grads))]
    for what, got, want in pairs:
        if got.shape != want.shape:
            raise AssertionError(f"{provider} {op.name}: {what} shape {got.shape} != {want.shape}")
        if not torch.isfinite(got).all():
            raise AssertionError(f"{provider} {op.name}: {what} is not finite")
        if not op.deterministic:
            continue  # each provider draws its own noise: values differ by design
        error = (got.double() - want).abs().max().item()
        scale = want.abs().max().item() + 1e-12
        if error > tolerance * scale:
            raise AssertionError(
                f"{provider} {op.name} {inputs.grad_output.dtype}: {what} differs from the "
                f"float64 eager formula by {error:.3g} (scale {scale:.3g}, tolerance "
                f"{tolerance} relative)"
            )


# -------------------------------------------------------------------- timing


def time_cpu(
    steps: dict[str, tuple[Callable, Callable]],
    min_rounds: int,
    max_rounds: int,
    budget_seconds: float,
    copy_probe: Optional[CopyProbe] = None,
    warmup_rounds: int = 2,
) -> dict[str, list[float]]:
    """Milliseconds per step of each provider, providers interleaved round by round
    (and one copy of ``copy_probe`` per round).

    Stops after ``max_rounds``, or after ``min_rounds`` once ``budget_seconds`` of
    wall time is spent. Python's garbage collector is off while timing.
    """
    samples: dict[str, list[float]] = {name: [] for name in steps}
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for round_index in range(warmup_rounds + max_rounds):
            for name, (prepare, run) in steps.items():
                state = prepare()
                start = time.perf_counter_ns()
                result = run(state)
                elapsed_ms = (time.perf_counter_ns() - start) * 1e-6
                del result, state  # freed outside the timed region
                if round_index >= warmup_rounds:
                    samples[name].append(elapsed_ms)
            if copy_probe is not None and round_index >= warmup_rounds:
                copy_probe.time_once()
            timed_rounds = round_index + 1 - warmup_rounds
            if timed_rounds >= min_rounds and time.perf_counter() - started > budget_seconds:
                break
    finally:
        gc.enable()
    return samples


_l2_flush_buffer: Optional[torch.Tensor] = None


def l2_flush_buffer() -> torch.Tensor:
    """The buffer zeroed before each timed GPU step (allocated once, kept)."""
    global _l2_flush_buffer
    if _l2_flush_buffer is None:
        _l2_flush_buffer = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    return _l2_flush_buffer


def time_gpu_steps(
    steps: list[tuple[Callable, Callable]],
    warmup_ms: float,
    rep_ms: float,
    min_runs: int = 10,
    max_runs: int = 2000,
) -> list[float]:
    """Device milliseconds of ``run(prepare())`` per call, cycling through ``steps``
    (one (prepare, run) pair per input set).

    Each call: ``prepare()`` (outside the timed region), the L2 flush, a CUDA event,
    ``run``, a CUDA event, all on the current stream. The number of calls is set from
    the wall time of a few calls (host work included), so one timing takes about
    ``warmup_ms + rep_ms`` of wall time; at least ``min_runs``, at most ``max_runs``.
    Python's garbage collector is off while timing.
    """
    flush = l2_flush_buffer()

    def call(index: int, events: Optional[tuple] = None) -> None:
        prepare, run = steps[index % len(steps)]
        state = prepare()
        flush.zero_()
        if events is not None:
            events[0].record()
        result = run(state)
        if events is not None:
            events[1].record()
        del result, state

    gc.collect()
    gc.disable()
    try:
        for index in range(len(steps)):  # each set once: lazy initialisation, caches
            call(index)
        torch.cuda.synchronize()
        probe_calls = 5
        start = time.perf_counter()
        for index in range(probe_calls):
            call(index)
        torch.cuda.synchronize()
        per_call_ms = max((time.perf_counter() - start) * 1e3 / probe_calls, 1e-3)
        for index in range(max(1, int(warmup_ms / per_call_ms))):
            call(index)
        runs = min(max_runs, max(min_runs, int(rep_ms / per_call_ms)))
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(runs)
        ]
        torch.cuda.synchronize()
        for index, pair in enumerate(events):
            call(index, pair)
        torch.cuda.synchronize()
    finally:
        gc.enable()
    return [begin.elapsed_time(end) for begin, end in events]


def time_gpu(
    function: Callable, input_sets: list[CaseInputs], mode: str, effort: str = "full"
) -> Timing:
    """Timing of one provider's step on the GPU, cycling through ``input_sets``; the
    steps are those of the CPU timing (``make_step``): in ``backward`` the forward of
    each call runs before its timed region, outside the events."""
    warmup_ms, rep_ms, min_runs, max_runs = GPU_EFFORT[effort]
    steps = [make_step(function, inputs, mode) for inputs in input_sets]
    return summarize(time_gpu_steps(steps, warmup_ms, rep_ms, min_runs, max_runs))


def gpu_input_sets(op: Op, size: Size, dtype: torch.dtype, first: CaseInputs) -> list[CaseInputs]:
    """``first`` plus more independent input sets until together they exceed
    ``GPU_ROTATION_BYTES`` (at most ``GPU_ROTATION_SETS`` sets)."""
    set_bytes = sum(t.numel() * t.element_size() for t in first.args if torch.is_tensor(t))
    count = max(1, math.ceil(GPU_ROTATION_BYTES / max(set_bytes, 1)))
    count = min(count, GPU_ROTATION_SETS)
    generator = torch.Generator(device="cuda").manual_seed(1)
    return [first] + [op.make_args(size, dtype, "cuda", generator) for _ in range(count - 1)]


# ------------------------------------------------------------ memory and ops


@dataclass
class StepAccounting:
    peak_extra_bytes: int
    memory_method: str
    kernels: Optional[int]
    kernels_counted_by: str


def account_step_cpu(prepare: Callable, run: Callable) -> tuple[int, int]:
    """(peak extra bytes, dispatcher ops) of one step, from a torch.profiler trace.

    Peak extra bytes: the maximum of the running sum of CPU allocator events inside
    the step. Dispatcher ops: the outermost ``aten::``/``vae_kernels::`` ops called
    inside the step (views such as ``aten::expand`` included).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as trace:
        state = prepare()
        with record_function(STEP_MARK):
            result = run(state)
        del result, state

    events = trace.profiler.kineto_results.events()
    mark = next(e for e in events if e.name() == STEP_MARK)
    allocations = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and mark.start_ns() <= e.start_ns() <= mark.end_ns()
    )
    running = peak = 0
    for _, nbytes in allocations:
        running += nbytes
        peak = max(peak, running)

    step_event = next(e for e in trace.events() if e.name == STEP_MARK)
    op_count = 0
    pending = list(step_event.cpu_children)
    while pending:
        event = pending.pop()
        if event.name.startswith(OP_PREFIXES):
            op_count += 1  # what it calls inside is its own business
        else:
            pending.extend(event.cpu_children)
    return peak, op_count


def count_gpu_kernels(events) -> int:
    """CUDA kernels among a trace's kineto events: device activities of type ``kernel``
    (not memcpy, memset or the ``gpu_user_annotation`` ranges that record_function
    scopes, such as torch.compile's, leave on the device timeline). Where no event says
    ``kernel`` (a torch whose events lack ``activity_type``, or name it otherwise), the
    device events that are not copies, memsets or annotations by name."""
    device_events = [e for e in events if e.device_type() == torch.autograd.DeviceType.CUDA]
    activities = [getattr(e, "activity_type", lambda: None)() for e in device_events]
    if "kernel" in activities:
        return activities.count("kernel")
    return sum(
        1
        for e in device_events
        if not (
            getattr(e, "is_user_annotation", lambda: False)()
            or "annotation" in str(getattr(e, "activity_type", lambda: "")())
            or e.name().startswith(("Memcpy", "Memset", "## "))
        )
    )


def account_step_gpu(prepare: Callable, run: Callable) -> tuple[int, int]:
    """(peak extra bytes from max_memory_allocated, CUDA kernels launched) of one step."""
    state = prepare()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run(state)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    del result, state

    state = prepare()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        result = run(state)
        torch.cuda.synchronize()
    del result, state
    return peak, count_gpu_kernels(trace.profiler.kineto_results.events())


def account_step(built: BuiltProvider, prepare: Callable, run: Callable, mode: str, device: str):
    if device == "cuda":
        peak, kernels = account_step_gpu(prepare, run)
        counted_by = "CUDA kernels (profiler; no memcpy/memset)"
        return StepAccounting(peak, "torch.cuda.max_memory_allocated", kernels, counted_by)
    peak, ops = account_step_cpu(prepare, run)
    method = "CPU allocator events (torch.profiler profile_memory)"
    if built.name == "compile":
        # Inductor's C++ kernels are not dispatcher ops; count the kernels it generated.
        return StepAccounting(peak, method, built.compiled_kernels.get(mode), "inductor kernels")
    return StepAccounting(peak, method, ops, "dispatcher ops (profiler)")
