#!/usr/bin/env bash
# The prepared GPU run: build with the CUDA kernels, run the GPU tests, time the GPU
# subset of the benchmark suite, all inside one time budget, and leave the results in
# OUTDIR (see "The prepared GPU run" in benchmarks/README.md).
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Stages, each under `timeout` (its cap, shortened so that the later stages keep their
# minimum; a stage with under 10 s left is skipped):
#   env           cap  60 s   nvidia-smi, versions, commit           -> env.txt
#   build         cap 300 s   pip install -e . with CUDA (sm_90)     -> build.log
#   test_cuda     cap 120 s   pytest tests/test_cuda.py              -> test_cuda.{log,xml}
#   test_triton   cap 150 s   pytest tests/triton                    -> test_triton.{log,xml}
#   bench         the rest    run.py --gpu-check --budget-s          -> bench.tar.gz
# then summary.md (stages, test counts, failures, the benchmark tables). The total is
# GPU_CHECK_BUDGET_S (default 540 s), so the run ends inside a 600 s device call even
# when a stage has to be killed. OUTDIR gets 8 files at most (the device tool returns 8).
#
# Without a GPU (no working nvidia-smi), or with GPU_CHECK_DRY_RUN=1: prints the plan,
# writes OUTDIR/summary.md saying "no GPU: skipped", builds nothing, exits 0.
# Exit status otherwise: 0 if every stage passed, 1 if any failed, timed out or was
# skipped (the summary says which); later stages run regardless.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (540), MAX_JOBS (16),
# TORCH_CUDA_ARCH_LIST (9.0), GPU_CHECK_TEST_WORKERS (8; pytest-xdist workers if
# installed, 0 for none), GPU_CHECK_SKIP_BUILD=1 (keep the library already built, e.g.
# on a device machine still warm from a previous call; it is still checked).

set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
case "$(realpath -m "$1")/" in
    "$REPO/benchmarks/results/"*)
        echo "gpu_check: OUTDIR must not be inside benchmarks/results/ (the committed results)" >&2
        exit 2
        ;;
esac
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd -P)
cd "$REPO" || exit 2

PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
WORKERS=${GPU_CHECK_TEST_WORKERS:-8}
export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# Stage caps (GPU_CHECK_CAP_<STAGE> overrides one) and the minimum each later stage
# keeps (seconds).
CAP_ENV=${GPU_CHECK_CAP_ENV:-60} CAP_BUILD=${GPU_CHECK_CAP_BUILD:-300}
CAP_TEST_CUDA=${GPU_CHECK_CAP_TEST_CUDA:-120} CAP_TEST_TRITON=${GPU_CHECK_CAP_TEST_TRITON:-150}
MIN_BUILD=120 MIN_TEST=45 MIN_BENCH=150 SUMMARY_S=15
BENCH_MARGIN_S=40  # run.py's own budget ends this long before its timeout
PYTEST_PER_TEST_S=120

elapsed() { printf '%4ds' "$SECONDS"; }
say() { echo "[$(elapsed)] $*"; }

plan() {
    cat <<EOF
Plan (total budget ${BUDGET_S} s; each stage under timeout, capped so later stages keep their minimum):
  1. env          cap ${CAP_ENV} s: nvidia-smi, torch/triton/nvcc/cmake versions, git commit, date -> env.txt
  2. build        cap ${CAP_BUILD} s: MAX_JOBS=${MAX_JOBS} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} ${PY} -m pip install -v --no-build-isolation --no-deps --no-index -e .
                  then checks that the library loads with its CUDA kernels -> build.log
  3. test_cuda    cap ${CAP_TEST_CUDA} s: ${PY} -m pytest tests/test_cuda.py (xdist -n ${WORKERS} if installed, ${PYTEST_PER_TEST_S} s per test if pytest-timeout) -> test_cuda.log, test_cuda.xml
  4. test_triton  cap ${CAP_TEST_TRITON} s: ${PY} -m pytest tests/triton -> test_triton.log, test_triton.xml
  5. bench        the rest (at least ${MIN_BENCH} s): ${PY} benchmarks/run.py --gpu-check --device cuda --out WORK/bench --budget-s (timeout - ${BENCH_MARGIN_S})
                  -> bench.tar.gz (results.json, results.csv, summary.md, PNGs, bench.log)
  6. summary      summary.md: stage times, pass/fail counts per test part, the benchmark tables
EOF
}

# ------------------------------------------------------------------ no GPU: dry run

no_gpu_reason=""
if [ "${GPU_CHECK_DRY_RUN:-0}" = "1" ]; then
    no_gpu_reason="GPU_CHECK_DRY_RUN=1"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
    no_gpu_reason="nvidia-smi not found"
elif ! nvidia-smi -L >/dev/null 2>&1; then
    no_gpu_reason="nvidia-smi -L failed (no GPU or no driver)"
fi
if [ -n "$no_gpu_reason" ]; then
    echo "gpu_check: no GPU: skipped ($no_gpu_reason). Dry run; nothing is built or run."
    plan
    {
        echo "# GPU check: no GPU: skipped"
        echo
        echo "- $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo unknown): $no_gpu_reason"
        echo "- nothing was built, tested or timed; on a GPU machine this script would run:"
        echo
        echo '```'
        plan
        echo '```'
    } >"$OUT/summary.md"
    exit 0
fi

# ------------------------------------------------------------------ the GPU run

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
STAGES="$WORK/stages.tsv"
: >"$STAGES"
say "gpu_check: OUTDIR $OUT, work dir $WORK, budget ${BUDGET_S} s"
plan

# Seconds a stage may run now: its cap, less whatever the later stages must keep.
stage_timeout() {
    local cap=$1 reserve=$2
    local left=$((BUDGET_S - SECONDS - reserve))
    if [ "$left" -lt "$cap" ]; then cap=$left; fi
    if [ "$cap" -lt 0 ]; then cap=0; fi
    echo "$cap"
}

record() { # name status seconds timeout note
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$STAGES"
}

# run_stage NAME TIMEOUT LOG ECHO CMD...: runs CMD under timeout (SIGTERM, then SIGKILL
# 10 s later), output to LOG (and to stdout when ECHO=1); sets STAGE_RC and STAGE_STATUS.
run_stage() {
    local name=$1 limit=$2 log=$3 echo_out=$4
    shift 4
    STAGE_RC=0
    if [ "$limit" -lt 10 ]; then
        STAGE_STATUS=SKIPPED STAGE_RC=99
        record "$name" SKIPPED 0 "$limit" "no time left in the budget"
        say "$name: SKIPPED (no time left)"
        return
    fi
    local start=$SECONDS
    say "$name: start (timeout ${limit} s) -> $(basename "$log")"
    if [ "$echo_out" = 1 ]; then
        timeout -s TERM -k 10 "$limit" "$@" 2>&1 | grep -v --line-buffered '^USDT:' | tee "$log"
    else
        timeout -s TERM -k 10 "$limit" "$@" 2>&1 | grep -v --line-buffered '^USDT:' >"$log"
    fi
    STAGE_RC=${PIPESTATUS[0]}
    case $STAGE_RC in
        0) STAGE_STATUS=ok ;;
        124 | 137) STAGE_STATUS=TIMEOUT ;;
        *) STAGE_STATUS=FAILED ;;
    esac
    record "$name" "$STAGE_STATUS" $((SECONDS - start)) "$limit" "exit $STAGE_RC"
    say "$name: $STAGE_STATUS (exit $STAGE_RC, $((SECONDS - start)) s)"
}

write_summary() { # writes OUT/summary.md; prints the short form when given "print"
    "$PY" - "$OUT" "$WORK" "$BUDGET_S" "$SECONDS" "${1:-}" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, work, budget, wall, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
stages = [line.split("\t") for line in (work / "stages.tsv").read_text().splitlines() if line]
env = (out / "env.txt").read_text(errors="replace") if (out / "env.txt").exists() else ""

def env_value(key):
    for line in env.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return "?"

def junit_counts(path):
    """(tests, passed, failed, errors, skipped, failure lines) from a junit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failed = errors = skipped = 0
    failures = []
    for suite in suites:
        for case in suite.iter("testcase"):
            tests += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    failed += tag == "failure"
                    errors += tag == "error"
                    message = (node.get("message") or node.text or "").strip().splitlines()
                    failures.append(f"{tag.upper()} {name}: {message[0][:200] if message else ''}")
                    break
            else:
                if case.find("skipped") is not None:
                    skipped += 1
    return tests, tests - failed - errors - skipped, failed, errors, skipped, failures

def log_counts(path):
    """Counts from pytest -v lines, for a run killed before it wrote its XML."""
    counts = dict.fromkeys(("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"), 0)
    failures = []
    for line in path.read_text(errors="replace").splitlines():
        if "::" not in line or line.startswith(("FAILED ", "ERROR ")):  # -rfE summary lines
            continue
        for word in counts:
            if f" {word}" in f" {line} " and (f"{word} " in line or line.endswith(word)):
                counts[word] += 1
                if word in ("FAILED", "ERROR"):
                    failures.append(line.strip()[:240])
                break
    passed = counts["PASSED"] + counts["XFAIL"] + counts["XPASS"]
    tests = passed + counts["FAILED"] + counts["ERROR"] + counts["SKIPPED"]
    return tests, passed, counts["FAILED"], counts["ERROR"], counts["SKIPPED"], failures

lines = [
    f"# GPU check: {env_value('gpu')}",
    "",
    f"- date {env_value('date')}; commit {env_value('git_commit')}; tree {env_value('tree_sha256')[:16]}",
    f"- torch {env_value('torch')}, triton {env_value('triton')}, nvcc {env_value('nvcc')}, "
    f"driver {env_value('driver')}, python {env_value('python')}",
    f"- total wall time {wall} s (budget {budget} s); command `bash benchmarks/gpu_check.sh OUTDIR`",
    "",
    "## Stages",
    "",
    "| stage | status | seconds | timeout s | note |",
    "|---|---|---|---|---|",
]
lines += [f"| {' | '.join(s)} |" for s in stages]
lines.append("")

short = ["== gpu_check summary ==", f"GPU {env_value('gpu')}, torch {env_value('torch')}, "
         f"triton {env_value('triton')}; total {wall} s of {budget} s"]
short += [f"  {s[0]:12s} {s[1]:8s} {s[2]:>4s} s  (timeout {s[3]} s; {s[4]})" for s in stages]

status = {s[0]: s[1] for s in stages}
lines += ["## Tests", "", "| part | stage | tests | passed | failed | errors | skipped | from |",
          "|---|---|---|---|---|---|---|---|"]
failure_lines = []
for part in ("test_cuda", "test_triton"):
    xml, log = out / f"{part}.xml", out / f"{part}.log"
    counts, source = None, ""
    if xml.exists():
        try:
            counts, source = junit_counts(xml), "junit XML"
        except ET.ParseError:
            counts = None
    if counts is None and log.exists():
        counts, source = log_counts(log), "log lines (no XML)"
    if counts is None:
        lines.append(f"| {part} | {status.get(part, '-')} | - | - | - | - | - | not run |")
        short.append(f"  {part}: not run")
        continue
    tests, passed, failed, errors, skipped, failures = counts
    flag = " (ALL SKIPPED)" if tests and skipped == tests else ""
    stage = status.get(part, "-")
    if stage == "TIMEOUT":
        stage += ": stopped, counts cover the tests that ran"
    lines.append(f"| {part} | {stage} | {tests} | {passed} | {failed} | {errors} | {skipped}{flag} "
                 f"| {source} |")
    short.append(f"  {part} ({stage}): {tests} tests, {passed} passed, {failed} failed, "
                 f"{errors} errors, {skipped} skipped{flag}")
    if failures:
        failure_lines += [f"### {part}: {len(failures)} failed or errored (first 30)", ""]
        failure_lines += [f"- {f}" for f in failures[:30]] + [""]
        short += [f"    {f[:160]}" for f in failures[:8]]
lines.append("")
lines += failure_lines

bench = work / "bench"
lines += ["## Benchmarks", ""]
results = bench / "results.json"
if results.exists():
    data = json.loads(results.read_text())
    meta, rows = data["meta"], data["rows"]
    slug = meta.get("device_slug", "gpu")
    lines += [
        f"From `bench.tar.gz` (run.py's results.json, results.csv, summary.md, PNGs). To keep "
        f"them: `tar -xzf bench.tar.gz` and copy `bench/*` into `benchmarks/results/{slug}/`, "
        f"then commit. Copy bandwidth {meta['copy_gbps']:.0f} GB/s.",
        "",
    ]
    text = (bench / "summary.md").read_text()
    # run.py's summary, its headings one level down
    lines += [("#" + l if l.startswith("#") else l) for l in text.splitlines()]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    short.append(f"bench: {len(rows)} rows, copy {meta['copy_gbps']:.0f} GB/s; results for "
                 f"benchmarks/results/{slug}/ in bench.tar.gz")
    if meta.get("failed_groups"):
        short += [f"  FAILED group {g['group']}: {g['error'][:150]}" for g in meta["failed_groups"]]
    if meta.get("skipped_groups"):
        short.append(f"  not measured (budget): {', '.join(meta['skipped_groups'])}")
    short.append("  forward_backward, median ms (%copy BW) [kernels]: " + " | ".join(providers))
    for r0 in rows:
        if r0["mode"] != "forward_backward" or r0["provider"] != providers[0]:
            continue
        peers = {r["provider"]: r for r in rows if (r["op"], r["size"], r["dtype"], r["mode"])
                 == (r0["op"], r0["size"], r0["dtype"], r0["mode"])}
        cells = [f"{peers[p]['median_ms']:.4f} ({100 * peers[p]['fraction_of_copy_bw']:.0f}%) "
                 f"[{peers[p]['kernels_per_step']}]" if p in peers else "-" for p in providers]
        short.append(f"  {r0['op']:20s} {r0['shape']:22s} {r0['dtype']:8s} " + " | ".join(cells))
elif (bench / "summary.md").exists():
    lines += (bench / "summary.md").read_text().splitlines()
    short.append("bench: no results.json; see summary.md")
else:
    lines.append("No benchmark results (see the bench stage and bench.log in bench.tar.gz).")
    short.append("bench: no results")
lines.append("")
files = sorted(p.name for p in out.iterdir() if p.is_file())
lines += ["## Files in OUTDIR", "", ", ".join(f"`{f}`" for f in files), ""]
(out / "summary.md").write_text("\n".join(lines))
if mode == "print":
    print("\n".join(short))
PYEOF
}

# 1. env --------------------------------------------------------------------------

NVCC=$(command -v nvcc || true)
if [ -z "$NVCC" ]; then
    for candidate in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
        if [ -x "$candidate" ]; then NVCC=$candidate; break; fi
    done
fi
if [ -n "$NVCC" ]; then
    export PATH="$(dirname "$NVCC"):$PATH"
    export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
    export CUDA_PATH=${CUDA_PATH:-$CUDA_HOME}
fi

record_env() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if command -v git >/dev/null 2>&1 && git rev-parse HEAD >/dev/null 2>&1; then
        echo "git_commit: $(git rev-parse HEAD)"
        echo "git_dirty_files: $(git status --porcelain 2>/dev/null | wc -l)"
    else
        echo "git_commit: unknown (no git repository in the copy)"
    fi
    # Identifies the copied tree with or without .git: sha256 over the sources.
    echo "tree_sha256: $(find csrc vae_kernels benchmarks tests setup.py CMakeLists.txt pyproject.toml \
        -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \
        -o -name '*.txt' -o -name '*.toml' -o -name '*.sh' \) -not -path '*/results/*' 2>/dev/null |
        LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
    echo "gpu: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    echo "driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
    echo "nvcc: ${NVCC:-not found} $([ -n "$NVCC" ] && "$NVCC" --version | grep -o 'release [0-9.]*')"
    echo "cuda_home: ${CUDA_HOME:-}"
    echo "cmake: $(cmake --version 2>/dev/null | head -1)"
    echo "ninja: $(ninja --version 2>/dev/null)"
    echo "gcc: $(gcc --version 2>/dev/null | head -1)"
    echo "host: $(uname -srm); $(nproc) CPUs"
    "$PY" - <<'PYEOF'
import importlib.metadata as md, platform
print("python:", platform.python_version(), platform.python_implementation())
for name in ("torch", "triton", "numpy", "pytest", "pytest-xdist", "pytest-timeout", "setuptools",
             "cmake", "ninja", "matplotlib", "mlxtend"):
    try:
        print(f"{name}:", md.version(name))
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
import torch
print("torch_cuda:", torch.version.cuda, "available:", torch.cuda.is_available(),
      "devices:", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device_properties:", p)
PYEOF
    echo
    echo "## nvidia-smi"
    nvidia-smi
    nvidia-smi --query-gpu=name,pci.bus_id,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,pstate,persistence_mode,compute_mode,mig.mode.current --format=csv
    echo
    echo "## free"
    free -g
    return 0
}
export -f record_env
export PY NVCC
run_stage env "$(stage_timeout $CAP_ENV $((MIN_BUILD + 2 * MIN_TEST + MIN_BENCH + SUMMARY_S)))" \
    "$OUT/env.txt" 0 bash -c record_env
grep -E '^(gpu|driver|torch|torch_cuda|triton|nvcc|git_commit):' "$OUT/env.txt"

# 2. build ------------------------------------------------------------------------

build() {
    set -o pipefail
    echo "nvcc: ${NVCC:-not found}; CUDA_HOME=${CUDA_HOME:-}; MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    local rc=0
    if [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
        echo "== GPU_CHECK_SKIP_BUILD=1: not building; checking the library already there"
    else
        "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e .
        rc=$?
    fi
    if [ $rc -ne 0 ] && ! grep -q -e 'Build files have been written' -e 'Configuring incomplete' "$BUILD_LOG"; then
        echo "== pip failed before CMake ran (rc $rc): python setup.py build_ext --inplace instead"
        "$PY" setup.py build_ext --inplace
        rc=$?
    fi
    [ $rc -eq 0 ] || { echo "== BUILD FAILED (rc $rc)"; return $rc; }
    echo "== checking the built library"
    "$PY" - <<'PYEOF'
import sys
import vae_kernels as vk
from vae_kernels import ops
print("library:", "loaded" if ops.LIBRARY_ERROR is None else f"NOT LOADED: {ops.LIBRARY_ERROR}")
print("CUDA kernels registered:", ops.has_cuda_kernels())
print("available backends:", vk.available_backends())
if not ops.has_cuda_kernels():
    print("== FAILED: the CUDA part of the extension was not built (look for "
          "'vae_kernels: building the CUDA kernels' in the CMake output above)")
    sys.exit(3)
PYEOF
}
export -f build
export BUILD_LOG="$OUT/build.log"
run_stage build "$(stage_timeout $CAP_BUILD $((2 * MIN_TEST + MIN_BENCH + SUMMARY_S)))" \
    "$OUT/build.log" 0 bash -c 'build 2>&1'
grep -E '^(library|CUDA kernels registered|available backends):|^== |vae_kernels: (building|torch has CUDA)' \
    "$OUT/build.log" | head -8
if [ "$STAGE_STATUS" = FAILED ] && [ "$STAGE_RC" = 3 ]; then
    sed -i '$ s/exit 3$/exit 3: CUDA kernels NOT built/' "$STAGES"
fi

# 3, 4. tests ---------------------------------------------------------------------

PYTEST_OPTS=(-v -rfE -p no:cacheprovider)
if [ "$WORKERS" -gt 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then
    PYTEST_OPTS+=(-n "$WORKERS")
fi
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    PYTEST_OPTS+=(--timeout "$PYTEST_PER_TEST_S")
fi
# SIGTERM (from timeout) becomes KeyboardInterrupt: pytest then still writes its XML.
PYTEST_MAIN='import signal, sys, pytest; signal.signal(signal.SIGTERM, signal.default_int_handler); sys.exit(pytest.main(sys.argv[1:]))'

run_stage test_cuda "$(stage_timeout $CAP_TEST_CUDA $((MIN_TEST + MIN_BENCH + SUMMARY_S)))" \
    "$OUT/test_cuda.log" 0 "$PY" -c "$PYTEST_MAIN" "${PYTEST_OPTS[@]}" \
    --junitxml="$OUT/test_cuda.xml" tests/test_cuda.py
tail -n 1 "$OUT/test_cuda.log"

run_stage test_triton "$(stage_timeout $CAP_TEST_TRITON $((MIN_BENCH + SUMMARY_S)))" \
    "$OUT/test_triton.log" 0 "$PY" -c "$PYTEST_MAIN" "${PYTEST_OPTS[@]}" \
    --junitxml="$OUT/test_triton.xml" tests/triton
tail -n 1 "$OUT/test_triton.log"
write_summary

# 5. bench ------------------------------------------------------------------------

BENCH_T=$(stage_timeout 100000 "$SUMMARY_S")
mkdir -p "$WORK/bench"
run_stage bench "$BENCH_T" "$WORK/bench.log" 1 "$PY" benchmarks/run.py --gpu-check --device cuda \
    --out "$WORK/bench" --budget-s $((BENCH_T - BENCH_MARGIN_S))
tar -czf "$OUT/bench.tar.gz" -C "$WORK" bench bench.log

# 6. summary ----------------------------------------------------------------------

write_summary print
files=$(find "$OUT" -type f | wc -l)
if [ "$files" -gt 8 ]; then
    echo "WARNING: $files files in $OUT; the device tool returns 8"
fi
say "total wall time ${SECONDS} s (budget ${BUDGET_S} s); summary: $OUT/summary.md"
if grep -q -v $'\tok\t' "$STAGES"; then
    exit 1
fi
exit 0
