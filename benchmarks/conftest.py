"""pytest-benchmark options for the benchmark suite (``pytest benchmarks/ --benchmark-only``).

    --bench-set quick   the cases of ``run.py --quick`` (default)
    --bench-set full    every case of ``run.py``
    --bench-device      cpu or cuda (default: cuda if available)
"""

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("vae_kernels benchmarks")
    group.addoption("--bench-set", choices=("quick", "full"), default="quick")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None)


def bench_device(config) -> str:
    chosen = config.getoption("--bench-device")
    return chosen or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    # The (case, provider) pairs, grouped so the pairs of one (op, size, dtype) run
    # together and share inputs and one compile.
    if "case" in metafunc.fixturenames and "provider" in metafunc.fixturenames:
        import cases as bench_cases

        device = bench_device(metafunc.config)
        quick = metafunc.config.getoption("--bench-set") == "quick"
        pairs = [
            (case, provider)
            for case in bench_cases.all_cases(device, quick=quick)
            for provider in bench_cases.providers_for(device)
        ]
        metafunc.parametrize(
            ("case", "provider"), pairs, ids=[f"{c.id}-{p}" for c, p in pairs]
        )


@pytest.fixture(scope="session")
def device(request) -> str:
    return bench_device(request.config)
