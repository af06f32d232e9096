"""The benchmark harness works: ``benchmarks/run.py --quick`` writes a sane row for
every case and provider, the byte floors are the documented counts, and the checks
inside the harness (agreement with the eager formula, memory and op accounting) can
fail. Speed is never asserted here.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import cases as bench_cases  # noqa: E402
import harness  # noqa: E402


# ------------------------------------------------------------ case definitions


def test_bernoulli_floor_bytes_are_the_documented_counts():
    op = bench_cases.OPS_BY_NAME["bernoulli_logits"]
    size = bench_cases.CPU_LARGE
    n = size.batch * size.data_dim
    assert op.floor_bytes(size, torch.float32, "forward") == 2 * n * 4
    assert op.floor_bytes(size, torch.float32, "forward_backward") == 3 * n * 4
    assert op.floor_bytes(size, torch.bfloat16, "forward_backward") == 3 * n * 2


def test_elbo_floor_counts_both_sides():
    op = bench_cases.OPS_BY_NAME["elbo_bernoulli"]
    size = bench_cases.CPU_LARGE
    n, m = size.batch * size.data_dim, size.batch * size.latent_dim
    # logits, x read and grad_logits written; mu, logvar read and both gradients written
    assert op.floor_bytes(size, torch.float32, "forward_backward") == (3 * n + 4 * m) * 4


def test_backward_floor_is_step_minus_forward():
    for op in bench_cases.OPS:
        f = op.floor_elements
        step = f["forward_backward"]
        assert f["backward"] == (step[0] - f["forward"][0], step[1] - f["forward"][1]), op.name


def test_every_op_mode_dtype_and_size_is_a_case():
    full = bench_cases.all_cases("cpu")
    assert {c.op.name for c in full} == set(bench_cases.OPS_BY_NAME)
    assert {c.mode for c in full} == set(bench_cases.MODES)
    assert {c.dtype_name for c in full} == {"float32", "bfloat16"}
    # Sizes that differ only in a dim an op does not use are measured once.
    sizes = {op.name: {c.size.name for c in full if c.op is op} for op in bench_cases.OPS}
    assert sizes["bernoulli_logits"] == {"mnist", "cifar32", "celeba64"}
    assert sizes["gaussian_kl"] == {"mnist", "cifar32", "celeba64", "celeba64_j512"}
    assert sizes["elbo_bernoulli"] == {"mnist", "cifar32", "celeba64", "celeba64_j512"}
    assert [c.id for c in full if c.is_headline] == [
        "elbo_bernoulli-celeba64-float32-forward_backward"
    ]
    assert max(s.batch for s in bench_cases.SIZES["cuda"]) == 4096


def test_new_likelihood_ops_are_cases_with_their_floors():
    full = bench_cases.all_cases("cpu")
    size = bench_cases.CPU_LARGE
    n = size.batch * size.data_dim
    for name, tensors in (
        ("laplace_nll", 2),  # loc, x (+ grad_loc)
        ("laplace_nll_learned", 3),  # loc, x, logscale (+ grad_loc, grad_logscale)
        ("continuous_bernoulli_nll", 2),  # logits, x (+ grad_logits)
    ):
        op = bench_cases.OPS_BY_NAME[name]
        assert {c.size.name for c in full if c.op is op} == {"mnist", "cifar32", "celeba64"}
        assert {(c.dtype_name, c.mode) for c in full if c.op is op} == {
            (d, m) for d in bench_cases.DTYPES for m in bench_cases.MODES
        }
        gradients = len(op.make_args(size, torch.float32, "cpu", torch.Generator()).grad_inputs)
        assert op.floor_bytes(size, torch.float32, "forward") == tensors * n * 4, name
        assert op.floor_bytes(size, torch.float32, "forward_backward") == (
            (tensors + gradients) * n * 4
        ), name


def test_continuous_bernoulli_eager_is_torch_distributions_formula():
    """The eager case is ``torch.distributions.ContinuousBernoulli(logits=l).log_prob``,
    which is BCE-with-logits - log(l / tanh(l / 2)) away from l = 0."""
    import torch.nn.functional as F

    op = bench_cases.OPS_BY_NAME["continuous_bernoulli_nll"]
    logits = torch.randn(8, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logits = torch.where(logits.abs() < 0.05, torch.full_like(logits, 0.5), logits)
    x = torch.rand(8, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    formula = F.binary_cross_entropy_with_logits(logits, x, reduction="none") - torch.log(
        logits / torch.tanh(logits / 2)
    )
    torch.testing.assert_close(op.eager(logits, x), formula.sum() / 8, rtol=1e-10, atol=1e-10)


def test_laplace_eager_is_latent_diffusions_l1_plus_log_2():
    op = bench_cases.OPS_BY_NAME["laplace_nll_learned"]
    g = torch.Generator().manual_seed(0)
    loc, x, logvar = (torch.rand(4, 30, generator=g, dtype=torch.float64) for _ in range(3))
    # LPIPSWithDiscriminator: rec_loss / exp(logvar) + logvar, summed / B (its logvar is
    # the Laplace log-scale); -log Laplace adds log 2 per element.
    latent_diffusion = torch.sum(torch.abs(x - loc) / torch.exp(logvar) + logvar) / 4
    expected = latent_diffusion + 30 * torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(op.eager(loc, x, logvar), expected)
    fixed = bench_cases.OPS_BY_NAME["laplace_nll"]
    torch.testing.assert_close(fixed.eager(loc, x), op.eager(loc, x, torch.zeros_like(loc)))


def test_only_the_eager_formula_gets_the_looser_tolerance():
    # torch.distributions' continuous Bernoulli is less accurate than the harness's
    # float32 tolerance; ours is held to it, so a wrong gradient of ours still fails.
    op, inputs = _small_inputs("continuous_bernoulli_nll")
    harness.check_agreement(op, inputs, op.eager, "eager")
    import vae_kernels as vk

    def off_by_a_percent(logits, x):
        return vk.continuous_bernoulli_nll(logits * 1.001, x)  # within eager's tolerance

    with pytest.raises(AssertionError, match="differs from the float64 eager formula"):
        harness.check_agreement(op, inputs, off_by_a_percent, "cpu")
    harness.check_agreement(op, inputs, off_by_a_percent, "eager")


def test_providers_come_from_available_backends():
    import vae_kernels as vk

    providers = bench_cases.providers_for("cpu")
    assert providers[:2] == ["eager", "compile"]
    assert "torch" not in providers
    assert ("cpu" in providers) == ("cpu" in vk.available_backends())
    assert "triton" not in providers and "cuda" not in providers  # GPU backends


# ------------------------------------------------------------- harness checks


def _small_inputs(op_name: str, dtype=torch.float32):
    op = bench_cases.OPS_BY_NAME[op_name]
    size = bench_cases.Size("tiny", batch=4, data_dim=10, latent_dim=3)
    return op, op.make_args(size, dtype, "cpu", torch.Generator().manual_seed(0))


@pytest.mark.parametrize("op_name", [op.name for op in bench_cases.OPS])
def test_every_provider_agrees_with_the_eager_formula(op_name):
    op, inputs = _small_inputs(op_name)
    for provider in bench_cases.providers_for("cpu"):
        if provider == "compile":
            continue  # compiled in the quick run below
        function = bench_cases.provider_function(provider, op)
        harness.check_agreement(op, inputs, function, provider)


def test_agreement_check_catches_a_wrong_normalization():
    op, inputs = _small_inputs("bernoulli_logits")
    per_batch_sum = lambda logits, x: op.eager(logits, x) * logits.shape[0]  # noqa: E731
    with pytest.raises(AssertionError, match="differs from the float64 eager formula"):
        harness.check_agreement(op, inputs, per_batch_sum, "wrong")


def test_step_accounting_sees_allocations_and_ops():
    nbytes = 4 * 2**20
    prepare = lambda: None  # noqa: E731
    run = lambda _: torch.empty(nbytes // 4).add_(1.0)  # noqa: E731
    peak, ops = harness.account_step_cpu(prepare, run)
    assert nbytes <= peak < 2 * nbytes
    assert ops == 2  # aten::empty, aten::add_


def test_time_cpu_interleaves_providers_and_the_copy():
    probe = harness.CopyProbe("cpu", nbytes=2**20)
    steps = {
        "a": ((lambda: None), (lambda _: torch.ones(100).sum())),
        "b": ((lambda: None), (lambda _: torch.ones(200).sum())),
    }
    samples = harness.time_cpu(steps, min_rounds=5, max_rounds=5, budget_seconds=0.0, copy_probe=probe)
    assert [len(s) for s in samples.values()] == [5, 5]
    assert len(probe.samples_ms) == 5
    assert all(ms > 0 for s in samples.values() for ms in s) and probe.gbps > 0


def test_quantile_matches_linear_interpolation():
    assert harness.quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)
    assert harness.quantile([3.0, 1.0, 2.0], 0.5) == 2.0


# ---------------------------------------------------------------- quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_quick")
    completed = subprocess.run(
        [sys.executable, str(BENCH_DIR / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


def test_quick_run_has_a_row_for_every_case_and_provider(quick_run):
    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    expected = {
        (c.op.name, c.size.name, c.dtype_name, c.mode, p)
        for c in bench_cases.all_cases("cpu", quick=True)
        for p in bench_cases.providers_for("cpu")
    }
    got = [(r["op"], r["size"], r["dtype"], r["mode"], r["provider"]) for r in rows]
    assert len(got) == len(set(got))
    assert set(got) == expected


def test_quick_run_rows_are_sane(quick_run):
    import run as bench_run

    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    cases = {c.id: c for c in bench_cases.all_cases("cpu", quick=True)}
    for r in rows:
        where = f"{r['op']} {r['mode']} {r['provider']}"
        case = cases[f"{r['op']}-{r['size']}-{r['dtype']}-{r['mode']}"]
        assert set(bench_run.ROW_FIELDS) <= set(r), where
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], where
        assert r["repeats"] >= bench_run.EFFORT["quick"][0], where
        assert r["floor_bytes"] == case.floor_bytes(), where
        assert r["gbps"] > 0 and r["copy_gbps"] > 0, where
        assert 0 < r["fraction_of_copy_bw"] <= 1.5, where
        assert r["floor_ms"] == pytest.approx(r["floor_bytes"] / r["copy_gbps"] / 1e6)
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_compile"] > 0, where
        if r["provider"] == "eager":
            assert r["speedup_vs_eager"] == 1.0
        if r["provider"] == "compile":
            assert r["speedup_vs_compile"] == 1.0 and r["compile_seconds"] > 0, where
        # A fused loss's backward for an upstream gradient of 1 hands over the gradients
        # its forward computed: no op at all.
        least_ops = 0 if r["mode"] == "backward" and r["provider"] not in ("eager", "compile") else 1
        assert isinstance(r["kernels_per_step"], int) and r["kernels_per_step"] >= least_ops, where
        assert r["peak_extra_bytes"] >= 0, where
        assert 0 <= r["other_load_cores"] <= 16, where  # others' CPU use while timed
        if r["mode"] == "forward_backward":
            # The step returns its gradients, so their bytes were allocated inside it
            # (in "backward" they may reuse buffers the forward saved, as inductor's
            # donated buffers do); one may be the upstream gradient itself (dz/dmu = 1).
            inputs = case.op.make_args(case.size, case.dtype, "cpu", torch.Generator())
            grad_bytes = sum(g.numel() * g.element_size() for g in inputs.grad_inputs)
            if inputs.grad_output.dim() > 0:
                grad_bytes -= inputs.grad_output.numel() * inputs.grad_output.element_size()
            assert r["peak_extra_bytes"] >= grad_bytes, where
        assert r["device_name"] and r["torch_version"] == torch.__version__, where
        assert r["cpu_kernel_isa"] in ("AVX512", "AVX2", "DEFAULT", ""), where
        assert r["date"] and r["quick"] is True, where


def test_quick_run_writes_csv_summary_and_plots(quick_run):
    import run as bench_run

    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    with open(quick_run / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench_run.ROW_FIELDS
        csv_rows = list(reader)
    assert len(csv_rows) == len(rows)
    assert all(float(r["median_ms"]) > 0 for r in csv_rows)

    summary = (quick_run / "summary.md").read_text()
    assert "## All cases" in summary and "## torch.compile compile time" in summary
    n_cases = len({(r["op"], r["size"], r["dtype"], r["mode"]) for r in rows})
    table = summary.split("## All cases")[1].split("##")[0]
    assert table.count("\n| ") == n_cases + 1  # header + one line per case

    for op in {r["op"] for r in rows}:
        png = quick_run / f"{op}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", op


def test_case_progress_counts_cases_and_needs_no_tqdm(monkeypatch, capsys):
    import builtins

    import run as bench_run

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    progress = bench_run.CaseProgress(5, file=terminal)
    if progress.bar is not None:  # tqdm installed: the bar counts finished cases
        progress("op-mnist-float32-forward")
        progress(None)
        assert progress.bar.n == 1
        progress.reach(4)  # a failed group's cases
        assert progress.bar.n == 4
        progress.close()
        assert "4/5" in terminal.getvalue() and "op-mnist-float32-forward" in terminal.getvalue()
    # Off a terminal (a log file, CI) the bar hides itself.
    hidden = bench_run.CaseProgress(5, file=io.StringIO())
    assert hidden.bar is None or hidden.bar.disable
    hidden.close()
    real_import = builtins.__import__

    def without_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tqdm)
    quiet = bench_run.CaseProgress(3)
    assert quiet.bar is None
    quiet("a case")
    quiet(None)
    quiet.reach(3)
    quiet.write("a log line")
    quiet.close()
    assert "a log line" in capsys.readouterr().out
    assert bench_run.CaseProgress(3, enabled=False).bar is None
    assert bench_run.parse_args(["--no-progress"]).no_progress


# ------------------------------------------------------- the prepared GPU run

GPU_CHECK = BENCH_DIR / "gpu_check.sh"


def test_gpu_check_dry_run_skips_cleanly_without_a_gpu(tmp_path):
    import os
    import shutil
    import time

    env = dict(os.environ)
    if shutil.which("nvidia-smi") is not None:
        env["GPU_CHECK_DRY_RUN"] = "1"  # a GPU machine: force the dry run
    out = tmp_path / "gpu_check"
    started = time.perf_counter()
    completed = subprocess.run(
        ["bash", str(GPU_CHECK), str(out)], capture_output=True, text=True, timeout=60, env=env
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert time.perf_counter() - started < 30
    assert "no GPU: skipped" in (out / "summary.md").read_text()
    assert "no GPU: skipped" in completed.stdout and "build" in completed.stdout  # the plan
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]  # nothing built or run


def test_gpu_check_refuses_to_write_into_the_committed_results():
    target = BENCH_DIR / "results" / "gpu_check_must_not_exist"
    completed = subprocess.run(
        ["bash", str(GPU_CHECK), str(target)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 2 and "benchmarks/results" in completed.stderr
    assert not target.exists()


def test_gpu_check_set_is_every_op_at_both_sizes_headline_first():
    cases = bench_cases.all_cases("cuda", gpu_check=True)
    groups = list(dict.fromkeys((c.op.name, c.size.name, c.dtype_name) for c in cases))
    assert groups[0] == ("elbo_bernoulli", "celeba64", "float32")
    assert {(o, s) for o, s, d in groups if d == "float32"} == {
        (op.name, size.name)
        for op in bench_cases.OPS
        for size in (op.own_sizes[0] if op.own_sizes else (bench_cases.MNIST, bench_cases.CPU_LARGE))
    }
    assert [g for g in groups if g[2] != "float32"] == [("elbo_bernoulli", "celeba64", "bfloat16")]
    assert groups[-1][2] == "bfloat16"  # extras last: the first left out by a budget
    assert {c.mode for c in cases} == set(bench_cases.MODES)
    assert [c.id for c in cases if c.is_headline] == [
        "elbo_bernoulli-celeba64-float32-forward_backward"
    ]


def test_run_gpu_check_needs_out_outside_results(tmp_path):
    for extra in ([], ["--out", str(BENCH_DIR / "results" / "x")]):
        completed = subprocess.run(
            [sys.executable, str(BENCH_DIR / "run.py"), "--gpu-check", *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 2, completed.stderr[-2000:]
        assert "--gpu-check" in completed.stderr
    assert not (BENCH_DIR / "results" / "x").exists()


def test_run_gpu_check_quick_on_cpu_stops_at_its_budget(tmp_path):
    out = tmp_path / "gpu_check_quick"
    completed = subprocess.run(
        [
            sys.executable, str(BENCH_DIR / "run.py"), "--gpu-check", "--quick", "--device", "cpu",
            "--ops", "gaussian_kl", "squared_error", "--budget-s", "0", "--no-plots",
            "--out", str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # The first group is always measured; a budget of 0 s leaves out the rest.
    assert {r["op"] for r in results["rows"]} == {"gaussian_kl"}
    assert results["meta"]["skipped_groups"] == ["squared_error-mnist-float32"]
    assert results["meta"]["gpu_check"] is True and results["meta"]["failed_groups"] == []
    summary = (out / "summary.md").read_text()
    assert "Groups not measured (time budget 0 s)" in summary and "squared_error" in summary


def test_gpu_kernel_count_leaves_out_copies_memsets_and_annotations():
    class Event:
        def __init__(self, device, activity, name):
            self.device, self.activity, self._name = device, activity, name

        def device_type(self):
            return self.device

        def activity_type(self):
            return self.activity

        def name(self):
            return self._name

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        Event(cuda, "kernel", "triton_per_fused_0"),
        Event(cuda, "gpu_user_annotation", "## Call CompiledFxGraph ##"),
        Event(cuda, "gpu_memset", "Memset (Device)"),
        Event(cuda, "gpu_memcpy", "Memcpy DtoD (Device -> Device)"),
        Event(cpu, "cpu_op", "aten::add"),
        Event(cuda, "kernel", "vectorized_elementwise_kernel"),
    ]
    assert harness.count_gpu_kernels(events) == 2


def test_gpu_timing_keeps_prepare_outside_the_events(monkeypatch):
    """time_gpu_steps with CUDA events replaced by host clocks: the timed region holds
    run alone (not prepare), sets rotate, and the run count follows the time budget."""
    import time

    class HostEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(harness, "_l2_flush_buffer", torch.empty(16, dtype=torch.int32))
    used = []

    def step(name):
        prepare = lambda: time.sleep(0.004) or name  # noqa: E731  (slow, not timed)
        run = lambda state: used.append(state) or time.sleep(0.0005)  # noqa: E731
        return prepare, run

    samples = harness.time_gpu_steps([step("a"), step("b")], warmup_ms=1, rep_ms=20, min_runs=4)
    assert 4 <= len(samples) <= 10  # ~20 ms of ~4.5 ms calls
    # run's 0.5 ms, not prepare's 4 ms: with prepare inside the events every sample would
    # exceed 4 ms; a busy host may still stretch one sleep, so the median decides.
    assert min(samples) > 0.4 and sorted(samples)[len(samples) // 2] < 3.5, samples
    assert set(used) == {"a", "b"}
