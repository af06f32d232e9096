"""The benchmark report: every case of ``cases.py`` for every provider, written as
CSV + JSON rows, a markdown summary and PNG plots.

    python benchmarks/run.py                 # full run, results/<device-slug>/
    python benchmarks/run.py --quick --out /tmp/bench   # < 1 minute on 2 cores (CI)
    python benchmarks/run.py --ops elbo_bernoulli --sizes celeba64 --dtypes float32
    python benchmarks/run.py --report-only   # re-render summary.md and plots from JSON
    python benchmarks/run.py --gpu-check --device cuda --out DIR --budget-s 300
                                             # the prepared GPU run (gpu_check.sh)

A full run compiles in a fresh inductor cache directory, so compile times are cold
compiles, and waits for an idle machine before timing each case (see
``time_cpu_case``). With tqdm installed, a progress bar over the cases shows on a
terminal (stderr; ``--no-progress`` hides it); the per-case lines go to stdout either way.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Compile in this process: a pool of compile workers would compete for the 2 cores
# with the timed code.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# Full runs compile in a fresh inductor cache directory, so the compile times are cold
# compiles; --quick reuses the default one (C++ builds cached from an earlier run) to
# stay within its minute. Set before torch is imported.
if "--quick" not in sys.argv and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vk_bench_inductor_")
    COMPILE_CACHE = "cold (fresh TORCHINDUCTOR_CACHE_DIR)"
else:
    COMPILE_CACHE = "inductor cache dir " + os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default")

import torch  # noqa: E402
import torch._functorch.config  # noqa: E402
import torch._inductor.config  # noqa: E402

# No cached graphs: every compile lowers its graph, so inductor's kernel count is real.
torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as bench_cases  # noqa: E402
import harness  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"

ROW_FIELDS = [
    "op", "provider", "mode", "dtype", "size", "shape", "batch", "data_dim", "latent_dim",
    "median_ms", "p20_ms", "p80_ms", "repeats",
    "floor_bytes", "floor_ms", "gbps", "copy_gbps", "fraction_of_copy_bw",
    "speedup_vs_eager", "speedup_vs_compile",
    "peak_extra_bytes", "memory_method", "kernels_per_step", "kernels_counted_by",
    "compile_seconds", "compile_cache", "headline", "other_load_cores",
    "device", "device_name", "cpu_kernel_isa", "num_threads",
    "torch_version", "triton_version", "vae_kernels_version", "python_version", "date", "quick",
]  # fmt: skip

# Timing effort: (min rounds, max rounds, seconds per case before stopping after min).
EFFORT = {"quick": (3, 10, 0.02), "full": (10, 200, 1.0), "headline": (60, 400, 20.0)}
# Full runs: a timing during which other processes used more than this many cores is
# repeated, at most ATTEMPTS times, each after waiting up to MAX_IDLE_WAIT_S for quiet.
# All the waiting of one run is capped at TOTAL_IDLE_WAIT_S; after that, cases are
# timed as the machine is (their other_load_cores says how busy it was).
QUIET_LOAD_CORES = 0.1
ATTEMPTS = 3
MAX_IDLE_WAIT_S = 60.0
TOTAL_IDLE_WAIT_S = 25 * 60.0
# A case timed while others used more than this is marked "disturbed" in the summary.
DISTURBED_LOAD_CORES = 0.25
waited_s = 0.0  # so far in this run
NO_WAIT = False  # --no-wait


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, float32, few repeats")
    parser.add_argument("--out", type=Path, help="output folder (default results/<device>/)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    # Subsets, for manual runs: the full set is the default.
    parser.add_argument("--ops", nargs="+", choices=[op.name for op in bench_cases.OPS])
    parser.add_argument("--sizes", nargs="+", metavar="SIZE", help="size names, e.g. celeba64")
    parser.add_argument("--dtypes", nargs="+", choices=list(bench_cases.DTYPES))
    parser.add_argument("--modes", nargs="+", choices=bench_cases.MODES)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (shown only with tqdm installed and stderr a terminal)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite summary.md and the plots from --out's results.json",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="do not wait for an idle machine (full runs do)"
    )
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="the prepared GPU run's set (cases.GPU_CHECK_*: MNIST and B=1024 D=3*64*64 "
        "J=256, float32, bfloat16 for the ELBO), headline group first; needs --out outside "
        "results/; a failing group is reported and skipped, SIGTERM stops the run and "
        "writes what was measured",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-time budget: no group is started that would end after it (predicted "
        "from the slowest group so far); the rest are listed as not measured",
    )
    args = parser.parse_args(argv)
    if args.gpu_check and not args.report_only:
        if args.out is None:
            parser.error("--gpu-check writes only where --out says (never into results/)")
        if RESULTS_DIR in (args.out.resolve(), *args.out.resolve().parents):
            parser.error(
                f"--gpu-check must not write into {RESULTS_DIR} (the committed results): "
                "give another --out and copy the results there after reviewing them"
            )
    return args


# --------------------------------------------------------------------- measuring


def warm_up_compiler(device: str = "cpu") -> float:
    """Compile a trivial function once, forward and backward, on the benchmarked device,
    so the per-case compile times do not include torch.compile's one-time start-up
    (imports, C++ toolchain checks, on GPU Triton's first compile)."""
    start = time.perf_counter()
    t = torch.ones(8, device=device, requires_grad=True)
    torch.compile(lambda t: (t * 2).sum(), dynamic=False)(t).backward()
    harness.synchronize(t.device)
    torch._dynamo.reset()
    return time.perf_counter() - start


def measure_group(
    op, size, dtype_name, modes, device, effort, copy_probe, log, progress=None
) -> list[dict]:
    """Rows for one (op, size, dtype): build every provider once, then each mode.
    ``effort``: "quick", "gpu_check" or "full". ``progress(case_id)`` (optional) is
    called before each mode's case is timed and ``progress(None)`` after it."""
    quick = effort == "quick"
    dtype = bench_cases.DTYPES[dtype_name]
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = op.make_args(size, dtype, device, generator)
    built = {}
    for provider in bench_cases.providers_for(device):
        built[provider] = harness.build_provider(provider, op, inputs)
        harness.check_agreement(op, inputs, built[provider].function, provider)
    input_sets = None
    if device == "cuda":
        input_sets = harness.gpu_input_sets(op, size, dtype, inputs)

    rows = []
    for mode in modes:
        case = bench_cases.Case(op, size, dtype_name, mode)
        if progress is not None:
            progress(case.id)
        steps = {
            name: bench_cases.make_step(b.function, inputs, mode) for name, b in built.items()
        }
        if device == "cuda":
            timings = {
                name: harness.time_gpu(b.function, input_sets, mode, effort)
                for name, b in built.items()
            }
            other_load = None  # device timings: host load does not enter them
        else:
            cpu_effort = "quick" if quick else ("headline" if case.is_headline else "full")
            timings, other_load = time_cpu_case(steps, cpu_effort, copy_probe)
        for name, b in built.items():
            accounting = harness.account_step(b, *steps[name], mode, device)
            timing = timings[name]
            rows.append(
                {
                    "op": op.name,
                    "provider": name,
                    "mode": mode,
                    "dtype": dtype_name,
                    "size": size.name,
                    "shape": op.shape_label(size),
                    "batch": size.batch,
                    "data_dim": size.data_dim if op.uses_data else "",
                    "latent_dim": size.latent_dim if op.uses_latent else "",
                    "median_ms": timing.median_ms,
                    "p20_ms": timing.p20_ms,
                    "p80_ms": timing.p80_ms,
                    "repeats": timing.repeats,
                    "floor_bytes": case.floor_bytes(),
                    "peak_extra_bytes": accounting.peak_extra_bytes,
                    "memory_method": accounting.memory_method,
                    "kernels_per_step": accounting.kernels,
                    "kernels_counted_by": accounting.kernels_counted_by,
                    "compile_seconds": b.compile_seconds,
                    "headline": case.is_headline,
                    "other_load_cores": other_load,
                }
            )
        medians = ", ".join(f"{n} {t.median_ms:.3f}" for n, t in timings.items())
        load = "" if other_load is None else f" (others used {other_load:.2f} cores)"
        log(f"{case.id:55s} ms: {medians}{load}")
        if progress is not None:
            progress(None)
    return rows


class CaseProgress:
    """A tqdm bar over the run's cases (on stderr, shown on a terminal only), or nothing
    where tqdm is not installed: tqdm is optional. Log lines go through ``write`` so
    they print above the bar."""

    def __init__(self, total: int, enabled: bool = True, file=None) -> None:
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=total, desc="cases", unit="case", file=file or sys.stderr, dynamic_ncols=True,
            disable=None,  # None: hidden when stderr is not a terminal (a log file, CI)
        )  # fmt: skip

    def __call__(self, case_id) -> None:
        """``case_id``: the case starting (shown beside the bar); None: one case done."""
        if self.bar is None:
            return
        if case_id is None:
            self.bar.update(1)
        else:
            self.bar.set_postfix_str(case_id, refresh=True)

    def reach(self, done: int) -> None:
        """Move the bar to ``done`` cases (past those of a failed group, which were not
        timed), so it still reaches its end."""
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def write(self, message: str) -> None:
        if self.bar is None or self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def time_cpu_case(steps, effort: str, copy_probe):
    """Timings of one case's steps and the other processes' load while they ran.

    Full runs wait for an idle machine first and, if other processes still took more
    than ``QUIET_LOAD_CORES`` during the timing, measure again (up to
    ``ATTEMPTS`` times), keeping the quietest attempt. Quick runs never wait.
    """
    global waited_s
    min_rounds, max_rounds, budget = EFFORT[effort]
    wait = effort != "quick" and not NO_WAIT
    best = None
    for _ in range(ATTEMPTS if wait else 1):
        if wait and waited_s < TOTAL_IDLE_WAIT_S:
            waited_s += harness.wait_until_idle(min(MAX_IDLE_WAIT_S, TOTAL_IDLE_WAIT_S - waited_s))
        meter = harness.LoadMeter()
        meter.start()
        samples = harness.time_cpu(steps, min_rounds, max_rounds, budget, copy_probe)
        other_load = meter.stop()
        if best is None or other_load < best[1]:
            best = ({name: harness.summarize(s) for name, s in samples.items()}, other_load)
        if other_load <= QUIET_LOAD_CORES:
            break
    return best


def add_derived(rows: list[dict], copy_gbps: float) -> None:
    """Bandwidth against the floor, and speed-ups over eager and compile of the same case."""
    by_case = {}
    for row in rows:
        by_case.setdefault((row["op"], row["size"], row["dtype"], row["mode"]), {})[
            row["provider"]
        ] = row
    for row in rows:
        seconds = row["median_ms"] * 1e-3
        row["gbps"] = row["floor_bytes"] / seconds / 1e9
        row["copy_gbps"] = copy_gbps
        row["fraction_of_copy_bw"] = row["gbps"] / copy_gbps
        row["floor_ms"] = row["floor_bytes"] / (copy_gbps * 1e9) * 1e3
        peers = by_case[(row["op"], row["size"], row["dtype"], row["mode"])]
        row["speedup_vs_eager"] = peers["eager"]["median_ms"] / row["median_ms"]
        row["speedup_vs_compile"] = peers["compile"]["median_ms"] / row["median_ms"]


# ----------------------------------------------------------------------- writing


def write_rows(rows: list[dict], meta: dict, out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in ROW_FIELDS})
    with open(out / "results.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f)


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _ms(value: float) -> str:
    return f"{value:.4g}" if value < 10 else f"{value:.1f}"


def _mb(nbytes) -> str:
    mib = nbytes / 2**20
    return f"{mib:.3f}" if mib < 10 else f"{mib:.0f}"


def _load(row: dict) -> str:
    load = row.get("other_load_cores")
    if load is None:
        return "-"
    return f"{load:.2f}" + (" (disturbed)" if load > DISTURBED_LOAD_CORES else "")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2g}" if fraction < 0.1 else f"{100 * fraction:.0f}"


def summary_markdown(rows: list[dict], meta: dict) -> str:
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    ours = [p for p in providers if p not in ("eager", "compile")]
    gpu = meta.get("device") == "cuda"
    lines = [
        f"# vae_kernels benchmarks: {meta['device_name']}",
        "",
        f"- {meta['date']}; torch {meta['torch_version']}, triton "
        f"{meta['triton_version'] or '-'}, vae_kernels {meta['vae_kernels_version']}; "
        f"CPU kernels ISA {meta['cpu_kernel_isa']}, {meta['num_threads']} threads",
    ]
    if gpu and meta.get("gpu"):
        g = meta["gpu"]
        lines.append(
            f"- GPU: {g['name']}, compute capability {g['capability']}, "
            f"{g['multiprocessors']} SMs, {g['memory_gib']:.0f} GiB, L2 {g['l2_mib']:.0f} MiB; "
            f"CUDA runtime of torch {g['cuda_version']}"
        )
    lines += [
        f"- command: `{meta['command']}` (niceness {meta['niceness']}; 1-minute load "
        f"average {meta['load_average_start']:.2f} at the start, "
        f"{meta['load_average_end']:.2f} at the end, {meta['wall_seconds'] / 60:.1f} min)",
    ]
    if gpu:
        lines += [
            f"- copy bandwidth (`dst.copy_(src)` of 64 MiB on the GPU, bytes read + "
            f"written; median device time of ~50 ms of copies, L2 flushed before each), "
            f"measured at the start, before each group and at the end: median "
            f"{meta['copy_gbps']:.1f} GB/s over {meta['copy_samples']} measurements (start "
            f"{meta['copy_gbps_start']:.1f}, end {meta['copy_gbps_end']:.1f}); the reference "
            "for the floor and %BW",
            "- times: median [p20, p80] of device time per step, CUDA events around each "
            "step on the current stream, the L2 flushed (256 MiB zeroed) before each step, "
            "input sets rotated; in `backward` the forward runs before the first event. "
            "Where the host is slower than the GPU (small sizes), the events also measure "
            "launch gaps. Inputs require grad in every mode (training)",
            "- floor: fewest bytes the step must move / copy bandwidth; `%BW` = floor bytes / "
            "median time as a share of copy bandwidth",
            f"- peak: {meta['memory_method']}, extra over the step's inputs; ops: CUDA "
            "kernels launched per step (profiler; memcpy/memset not counted)",
        ]
    else:
        lines += [
            f"- copy bandwidth (`dst.copy_(src)` of 64 MiB, bytes read + written), timed once "
            f"per timing round through the run: median {meta['copy_gbps']:.1f} GB/s over "
            f"{meta['copy_samples']} copies (start {meta['copy_gbps_start']:.1f}, end "
            f"{meta['copy_gbps_end']:.1f}); the reference for the floor and %BW",
            "- times: median [p20, p80] of wall time per step, providers interleaved round by "
            "round; inputs require grad in every mode (training). The `cpu` backend computes "
            "its losses' local gradients in `forward`, so its `backward` is one multiply by the "
            "upstream gradient, skipped when that is exactly 1 (as here)",
            "- floor: fewest bytes the step must move / copy bandwidth; `%BW` = floor bytes / "
            "median time as a share of copy bandwidth",
            f"- peak: {meta['memory_method']}, extra over the step's inputs; ops: "
            "`aten::`/`vae_kernels::` dispatcher ops per step for eager and our backends, "
            "inductor-generated kernels for compile",
            "- load: cores' worth of CPU time other processes used while the case was timed "
            f"(full runs wait for an idle machine first, {meta.get('idle_wait_seconds', 0) / 60:.1f} "
            "min of waiting in this run, and repeat a timing disturbed by more than "
            f"{QUIET_LOAD_CORES} cores up to {ATTEMPTS} times, keeping the quietest). Cases "
            f"timed while others used more than {DISTURBED_LOAD_CORES} cores are marked "
            "(disturbed): on 2 cores their times include scheduler stalls of several ms and "
            "are not reliable",
        ]
    lines += [
        f"- compile: torch.compile(dynamic=False) of the eager formulas; compile cache "
        f"{meta['compile_cache']}; first-compile start-up {meta['compiler_startup_s']:.1f} s "
        "(excluded from the per-case compile times below)",
        "",
    ]
    lines += _incomplete_markdown(meta)

    headline = [r for r in rows if r["headline"]]
    if headline:
        floor = headline[0]
        lines += [
            "## Issue-2 case: `elbo_loss` forward+backward, Bernoulli logits, "
            f"{floor['shape']}, float32",
            "",
            f"Bytes floor: {floor['floor_bytes'] / 1e6:.1f} MB -> {_ms(floor['floor_ms'])} ms "
            "at copy bandwidth.",
            "",
            "| provider | median ms | p20 ms | p80 ms | runs | x eager | x compile | GB/s "
            "| % copy BW | peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in headline:
            lines.append(
                f"| {r['provider']} | {_ms(r['median_ms'])} | {_ms(r['p20_ms'])} | "
                f"{_ms(r['p80_ms'])} | {r['repeats']} | {r['speedup_vs_eager']:.2f} | "
                f"{r['speedup_vs_compile']:.2f} | {r['gbps']:.1f} | "
                f"{_percent(r['fraction_of_copy_bw'])} | {_mb(r['peak_extra_bytes'])} |"
            )
        lines.append("")

    by_case = {}
    for r in rows:
        by_case.setdefault((r["op"], r["mode"], r["dtype"], r["size"]), {})[r["provider"]] = r
    header = ["op", "mode", "dtype", "shape", "floor ms"]
    header += [f"{p} ms" for p in providers]
    for p in ours:
        header += [f"{p} x eager", f"{p} x compile"]
    header += [f"{p} %BW" for p in providers]
    header += ["peak MB " + "/".join(providers), "ops " + "/".join(providers), "load"]
    lines += [
        "## All cases",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    slower = []
    for (op, mode, dtype, _), peers in by_case.items():
        first = next(iter(peers.values()))
        cells = [op, mode, dtype, first["shape"], _ms(first["floor_ms"])]
        cells += [_ms(peers[p]["median_ms"]) for p in providers]
        for p in ours:
            cells += [f"{peers[p]['speedup_vs_eager']:.2f}", f"{peers[p]['speedup_vs_compile']:.2f}"]
            if peers[p]["speedup_vs_compile"] < 1.0:
                slower.append((p, peers[p], peers["compile"]))
        cells += [_percent(peers[p]["fraction_of_copy_bw"]) for p in providers]
        cells.append("/".join(_mb(peers[p]["peak_extra_bytes"]) for p in providers))
        cells.append("/".join(str(peers[p]["kernels_per_step"]) for p in providers))
        cells.append(_load(first))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Cases where a vae_kernels backend is not faster than torch.compile", ""]
    if not slower:
        lines.append("None.")
    else:
        lines += [
            "| backend | op | mode | dtype | shape | ms | compile ms | x compile | %BW "
            "| compile %BW | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p, r, c in slower:
            lines.append(
                f"| {p} | {r['op']} | {r['mode']} | {r['dtype']} | {r['shape']} | "
                f"{_ms(r['median_ms'])} | {_ms(c['median_ms'])} | "
                f"{r['speedup_vs_compile']:.2f} | {_percent(r['fraction_of_copy_bw'])} | "
                f"{_percent(c['fraction_of_copy_bw'])} | {_load(r)} |"
            )
    lines.append("")

    compile_rows = [r for r in rows if r["provider"] == "compile" and r["mode"] == "forward"]
    lines += [
        "## torch.compile compile time (first forward+backward, seconds)",
        "",
        "| op | dtype | shape | compile s |",
        "|---|---|---|---|",
    ]
    for r in compile_rows:
        lines.append(f"| {r['op']} | {r['dtype']} | {r['shape']} | {r['compile_seconds']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def _incomplete_markdown(meta: dict) -> list[str]:
    """What a run did not measure: groups that failed (gpu-check), groups left out by
    the time budget, an interrupted run."""
    lines = []
    if meta.get("interrupted"):
        lines += [f"**Interrupted** ({meta['interrupted']}): the groups below were not measured.", ""]
    failed = meta.get("failed_groups") or []
    if failed:
        lines += ["## Groups that failed (not in the tables)", ""]
        for item in failed:
            lines.append(f"- `{item['group']}`: {item['error']}")
        lines.append("")
    skipped = meta.get("skipped_groups") or []
    if skipped:
        budget = meta.get("budget_s")
        if meta.get("interrupted"):
            reason = "interrupted"
        else:
            reason = f"time budget {budget:.0f} s" if budget is not None else "not reached"
        lines += [f"## Groups not measured ({reason})", "", ", ".join(f"`{g}`" for g in skipped), ""]
    return lines


def plot(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per op: time and % of copy bandwidth against elements, per mode;
    one colour per provider, one line style per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    colours = {p: f"C{i}" for i, p in enumerate(providers)}
    styles = {"float32": "-", "bfloat16": "--"}
    for op in dict.fromkeys(r["op"] for r in rows):
        figure, axes = plt.subplots(2, 3, figsize=(13, 6.5), squeeze=False)
        for column, mode in enumerate(bench_cases.MODES):
            for provider in providers:
                for dtype in styles:
                    line = [
                        r for r in rows
                        if (r["op"], r["mode"], r["provider"], r["dtype"]) == (op, mode, provider, dtype)
                    ]  # fmt: skip
                    if not line:
                        continue
                    elements = [r["floor_bytes"] for r in line]
                    label = f"{provider} {dtype}"
                    kwargs = dict(color=colours[provider], linestyle=styles[dtype], marker="o")
                    axes[0][column].plot(elements, [r["median_ms"] for r in line], label=label, **kwargs)
                    axes[0][column].fill_between(
                        elements, [r["p20_ms"] for r in line], [r["p80_ms"] for r in line],
                        color=colours[provider], alpha=0.15,
                    )  # fmt: skip
                    axes[1][column].plot(
                        elements, [100 * r["fraction_of_copy_bw"] for r in line], label=label, **kwargs
                    )
            axes[0][column].set_title(f"{op}: {mode}")
            axes[0][column].set_ylabel("median ms (p20-p80 band)")
            axes[1][column].set_ylabel("% of copy bandwidth")
            for row_axes in (axes[0][column], axes[1][column]):
                row_axes.set_xscale("log")
                row_axes.set_xlabel("bytes floor of the step")
                row_axes.grid(True, alpha=0.3)
            axes[0][column].set_yscale("log")
        axes[0][0].legend(fontsize=7)
        figure.suptitle(f"{op} on {rows[0]['device_name']}")
        figure.tight_layout()
        path = out / f"{op}.png"
        figure.savefig(path, dpi=70)
        plt.close(figure)
        paths.append(path)
    return paths


def write_report(rows: list[dict], meta: dict, out: Path, plots: bool) -> None:
    (out / "summary.md").write_text(summary_markdown(rows, meta))
    if plots:
        plot(rows, out)


# -------------------------------------------------------------------------- main


def main(argv=None) -> int:
    global NO_WAIT
    args = parse_args(argv)
    NO_WAIT = args.no_wait
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not args.report_only and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    out = args.out or RESULTS_DIR / harness.device_slug(device)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        write_report(results["rows"], results["meta"], out, plots=not args.no_plots)
        return 0
    started = time.perf_counter()
    progress = None  # the bar, once the cases are known

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - started:6.1f}s] {message}"
        if progress is None:
            print(line, flush=True)
        else:
            progress.write(line)

    if args.gpu_check:
        # The caller's `timeout` stops a run with SIGTERM: stop measuring, write the rows.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    effort = "quick" if args.quick else ("gpu_check" if args.gpu_check else "full")
    meta = harness.environment(device)
    meta["quick"] = args.quick
    meta["gpu_check"] = args.gpu_check
    meta["budget_s"] = args.budget_s
    meta["device_slug"] = harness.device_slug(device)
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        meta["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": props.total_memory / 2**30,
            "l2_mib": getattr(props, "L2_cache_size", 0) / 2**20,
            "cuda_version": torch.version.cuda,
        }
    meta["command"] = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta["compile_cache"] = COMPILE_CACHE
    # Other work on the machine shows in the times; record how busy it was.
    meta["load_average_start"] = os.getloadavg()[0]
    meta["niceness"] = os.nice(0)
    meta["providers"] = bench_cases.providers_for(device)
    copy_probe = harness.CopyProbe(device)
    meta["copy_gbps_start"] = copy_probe.measure()
    log(f"{meta['device_name']}, providers {meta['providers']}, copy {meta['copy_gbps_start']:.1f} GB/s")
    meta["compiler_startup_s"] = warm_up_compiler(device)
    log(f"compiler warm-up {meta['compiler_startup_s']:.1f} s")

    cases = bench_cases.all_cases(
        device,
        args.quick,
        ops=args.ops,
        sizes=args.sizes,
        dtypes=args.dtypes,
        modes=args.modes,
        gpu_check=args.gpu_check,
    )
    if not cases:
        raise SystemExit("no case matches the given --ops/--sizes/--dtypes/--modes")
    groups = list(dict.fromkeys((c.op, c.size, c.dtype_name) for c in cases))
    group_sizes = [sum(1 for c in cases if (c.op, c.size, c.dtype_name) == g) for g in groups]
    progress = CaseProgress(len(cases), enabled=not args.no_progress)
    rows = []
    group_seconds = []
    meta["failed_groups"], meta["skipped_groups"], meta["interrupted"] = [], [], None

    def group_name(group) -> str:
        return "-".join((group[0].name, group[1].name, group[2]))

    for index, (op, size, dtype_name) in enumerate(groups):
        elapsed = time.perf_counter() - started
        predicted_end = elapsed + max(group_seconds, default=0.0)
        if args.budget_s is not None and group_seconds and predicted_end > args.budget_s:
            meta["skipped_groups"] = [group_name(g) for g in groups[index:]]
            log(f"time budget {args.budget_s:.0f} s: {len(groups) - index} groups not measured")
            break
        modes = [c.mode for c in cases if (c.op, c.size, c.dtype_name) == (op, size, dtype_name)]
        group_started = time.perf_counter()
        try:
            if device == "cuda" and index > 0:
                copy_probe.measure()  # the reference bandwidth, through the run
            rows += measure_group(
                op, size, dtype_name, modes, device, effort, copy_probe, log, progress
            )
        except KeyboardInterrupt:
            meta["interrupted"] = f"after {time.perf_counter() - started:.0f} s"
            meta["skipped_groups"] = [group_name(g) for g in groups[index:]]
            log(f"interrupted: {len(groups) - index} groups not measured")
            break
        except Exception as error:  # noqa: BLE001  (gpu-check: report it, go on)
            if not args.gpu_check:
                raise
            traceback.print_exc()
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            name = group_name((op, size, dtype_name))
            meta["failed_groups"].append({"group": name, "error": message})
            log(f"FAILED {name}: {message}")
            if device == "cuda":
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001  (a broken CUDA context: later groups fail too)
                    pass
        group_seconds.append(time.perf_counter() - group_started)
        progress.reach(sum(group_sizes[: index + 1]))
    progress.close()
    if not rows:
        write_failure_note(out, meta)
        raise SystemExit("no group was measured")

    try:
        meta["copy_gbps_end"] = copy_probe.measure()
    except (KeyboardInterrupt, Exception):  # noqa: BLE001  (keep the rows measured)
        if not args.gpu_check:
            raise
        meta["copy_gbps_end"] = copy_probe.gbps
    meta["copy_gbps"] = copy_probe.gbps
    meta["copy_samples"] = len(copy_probe.samples_ms)
    meta["load_average_end"] = os.getloadavg()[0]
    meta["memory_method"] = rows[0]["memory_method"]
    meta["wall_seconds"] = time.perf_counter() - started
    meta["idle_wait_seconds"] = waited_s
    add_derived(rows, meta["copy_gbps"])
    for row in rows:
        for key in ROW_FIELDS:
            if key in meta and key not in row:
                row[key] = meta[key]
        row["compile_cache"] = COMPILE_CACHE if row["provider"] == "compile" else ""

    write_rows(rows, meta, out)
    write_report(rows, meta, out, plots=False)
    log(f"{len(rows)} rows written to {out}")
    if not args.no_plots:
        try:
            plot(rows, out)
        except KeyboardInterrupt:
            log("interrupted while plotting: `run.py --report-only --out DIR` draws them")
    return 1 if meta["failed_groups"] else 0


def write_failure_note(out: Path, meta: dict) -> None:
    """summary.md of a run that measured nothing: why."""
    lines = [f"# vae_kernels benchmarks: {meta['device_name']}", "", "Nothing was measured.", ""]
    (out / "summary.md").write_text("\n".join(lines + _incomplete_markdown(meta)))


if __name__ == "__main__":
    sys.exit(main())
