"""pytest-benchmark over the cases of ``cases.py`` (the same as ``run.py``).

    pytest benchmarks/ --benchmark-only                    # quick set
    pytest benchmarks/ --benchmark-only --bench-set full   # every case

pytest-benchmark times wall clock per round (setup, e.g. the forward before a
backward, excluded). Bandwidth against the bytes floor goes to ``extra_info``.
"""

import pytest
import torch

import cases as bench_cases
import harness

ROUNDS = {"quick": 10, "full": 50}


class GroupCache:
    """Inputs and built providers of the current (op, size, dtype) group only: a new
    group frees the last one (and ``torch._dynamo.reset`` in a compile would make the
    old compiled functions recompile anyway)."""

    def __init__(self):
        self.key = None
        self.inputs = None
        self.built = {}

    def get(self, case, provider, device):
        key = (case.op.name, case.size, case.dtype_name)
        if key != self.key:
            self.key, self.built = key, {}
            generator = torch.Generator(device=device).manual_seed(0)
            self.inputs = case.op.make_args(case.size, case.dtype, device, generator)
        if provider not in self.built:
            built = harness.build_provider(provider, case.op, self.inputs)
            harness.check_agreement(case.op, self.inputs, built.function, provider)
            self.built[provider] = built
        return self.inputs, self.built[provider]


@pytest.fixture(scope="session")
def group_cache():
    return GroupCache()


@pytest.fixture(scope="session")
def copy_gbps(device):
    return harness.CopyProbe(device).measure()


def test_op(benchmark, case, provider, device, group_cache, copy_gbps, request):
    inputs, built = group_cache.get(case, provider, device)
    prepare, run = bench_cases.make_step(built.function, inputs, case.mode)
    if device == "cuda":
        step = run
        run = lambda state: (step(state), torch.cuda.synchronize())  # noqa: E731

    benchmark.group = f"{case.op.name}-{case.size.name}-{case.dtype_name}-{case.mode}"
    rounds = ROUNDS[request.config.getoption("--bench-set")]
    benchmark.pedantic(run, setup=lambda: ((prepare(),), {}), rounds=rounds, warmup_rounds=2)

    floor_bytes = case.floor_bytes()
    benchmark.extra_info.update(
        provider=provider,
        floor_bytes=floor_bytes,
        copy_gbps=copy_gbps,
        compile_seconds=built.compile_seconds,
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["gbps"] = floor_bytes / seconds / 1e9
        benchmark.extra_info["fraction_of_copy_bw"] = floor_bytes / seconds / 1e9 / copy_gbps
