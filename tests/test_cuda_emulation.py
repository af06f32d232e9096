"""The CUDA kernels (csrc/cuda/*.cu) executed on the CPU, in every CI run, without a GPU
or nvcc: a host emulation of the CUDA programming model (tests/cuda_emulation/).

tests/cuda_emulation/include/ holds stand-ins for the CUDA toolkit's headers
(cuda_runtime.h, cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h), so g++ compiles the
unchanged .cu sources (`-x c++`); their kernels run on a pool of host threads, one per
CUDA thread of a block, with real barriers for __syncthreads and warp shuffles
(include/cuda_emulation.h describes the model). This module

- builds that library with AddressSanitizer + UBSan (objects cached in pytest's cache
  directory, keyed by a hash of the sources), and a second one, unsanitized, from a copy
  of csrc/ whose block_sum lacks its first __syncthreads (the planted-race self-test);
- runs tests/cuda_emulation/check_kernels.py (every launcher of launchers.h, every dtype,
  against the float64 oracle) once, in a subprocess with the ASan runtime preloaded, and
  reports each of its test functions as a test here: a failure, a crash, or any sanitizer
  or emulation report fails;
- with -m slow: the same under scheduling jitter, and under ThreadSanitizer.

Skipped only where g++ is missing.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cuda_emulation import build

ROOT = Path(__file__).resolve().parents[1]
CHECKS = Path(build.__file__).with_name("check_kernels.py")
CHECK_FUNCTIONS = [node.name for node in ast.parse(CHECKS.read_text()).body
                   if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
# Lines that mean a sanitizer or the emulation reported a problem.
REPORT_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                  "UndefinedBehaviorSanitizer", "WARNING: ThreadSanitizer", "cuda-emulation error:")
SANITIZER_OPTIONS = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:abort_on_error=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:abort_on_error=1:second_deadlock_stack=1",
}

pytestmark = pytest.mark.skipif(build.compiler() is None, reason="g++ is not on PATH")


@dataclass
class CheckRun:
    """One subprocess run of check_kernels.py."""

    returncode: int
    output: str
    seconds: float
    results: dict = field(default_factory=dict)  # test id -> (outcome, message)
    figures: dict = field(default_factory=dict)  # check_kernels.report()

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]

    def reports(self) -> list[str]:
        return [line for line in self.output.splitlines() if any(m in line for m in REPORT_MARKERS)]

    def assert_clean(self) -> None:
        reports = self.reports()
        assert not reports, ("sanitizer/emulation reports:\n" + "\n".join(reports[:20])
                             + "\n\n" + self.tail())
        assert self.returncode in (0, 1) and self.results, (
            f"check_kernels.py did not finish (exit code {self.returncode}: a crash, an abort "
            f"or a hang):\n{self.tail()}")

    def assert_passed(self, prefix: str = "") -> None:
        failed = [f"{name}: {message}" for name, (outcome, message) in self.results.items()
                  if name.startswith(prefix) and outcome in ("failure", "error")]
        assert not failed, f"{len(failed)} failed:\n\n" + "\n\n".join(failed)[:30000]

    def passed(self) -> int:
        return sum(outcome == "passed" for outcome, _ in self.results.values())


def run_checks(tmp: Path, sanitizer: str, libraries: dict, *args: str, env: dict | None = None,
               timeout: float = 1200) -> CheckRun:
    """Runs check_kernels.py in a fresh Python with the sanitizer runtime preloaded."""
    junit, figures = tmp / "junit.xml", tmp / "figures.json"
    environment = dict(os.environ, **SANITIZER_OPTIONS, **(env or {}),
                       VK_EMULATION_LIB=str(libraries["kernels"]), VK_EMULATION_REPORT=str(figures))
    if "planted" in libraries:
        environment["VK_EMULATION_PLANTED_LIB"] = str(libraries["planted"])
    runtime = build.preload(sanitizer)
    if runtime:
        environment["LD_PRELOAD"] = " ".join(filter(None, [runtime, os.environ.get("LD_PRELOAD")]))
    # --capture=sys: what the sanitizers write to file descriptor 2 must reach us even when
    # they abort the process (pytest's default fd capture would swallow it).
    command = [sys.executable, "-m", "pytest", str(CHECKS), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "--capture=sys", f"--junitxml={junit}", *args]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                              timeout=timeout, check=False)
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        text = [x.decode(errors="replace") if isinstance(x, bytes) else x or ""
                for x in (e.stdout, e.stderr)]
        returncode, output = -1, f"timed out after {timeout} s\n" + "".join(text)
    run = CheckRun(returncode, output, time.monotonic() - start)
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = child.tag
                    message = (child.get("message") or "") + "\n" + (child.text or "")
            run.results[case.get("name")] = (outcome, message.strip())
    if figures.exists():
        run.figures = json.loads(figures.read_text())
    return run


@pytest.fixture(scope="session")
def emulation_cache(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir("cuda_emulation"))
    return tmp_path_factory.mktemp("cuda_emulation_cache")


@pytest.fixture(scope="session")
def libraries(emulation_cache, tmp_path_factory) -> dict:
    planted_csrc = build.copy_csrc_without_first_barrier(tmp_path_factory.mktemp("planted"))
    start = time.monotonic()
    try:
        kernels, planted = build.build(emulation_cache, [("asan", "asan", build.CSRC),
                                                         ("planted", "none", planted_csrc)])
    except build.BuildError as e:
        pytest.fail(f"building the emulated CUDA kernels failed:\n{e}")
    return {"kernels": kernels, "planted": planted, "build_seconds": time.monotonic() - start}


@pytest.fixture(scope="session")
def sanitized_run(libraries, tmp_path_factory) -> CheckRun:
    return run_checks(tmp_path_factory.mktemp("sanitized_run"), "asan", libraries)


def test_emulated_kernels_build_and_run_clean(libraries, sanitized_run, record_property):
    """The sanitized run ended normally and printed no sanitizer or emulation report."""
    record_property("build_seconds", round(libraries["build_seconds"], 1))
    record_property("run_seconds", round(sanitized_run.seconds, 1))
    print(f"build {libraries['build_seconds']:.1f} s, checks {sanitized_run.seconds:.1f} s "
          f"({len(sanitized_run.results)} cases); figures: {json.dumps(sanitized_run.figures)}")
    sanitized_run.assert_clean()


@pytest.mark.parametrize("check", CHECK_FUNCTIONS)
def test_emulated_kernels(sanitized_run, check):
    """All cases of one test function of check_kernels.py (its messages on failure)."""
    cases = {name: result for name, result in sanitized_run.results.items()
             if name.split("[")[0] == check}
    if not cases:
        pytest.fail(f"no result for {check}: the run stopped early (exit code "
                    f"{sanitized_run.returncode}):\n{sanitized_run.tail()}")
    sanitized_run.assert_passed(check)
    if all(outcome == "skipped" for outcome, _ in cases.values()):
        pytest.skip(next(iter(cases.values()))[1])


@pytest.mark.parametrize("which,message", [(0, "some threads returned early"),
                                           (1, "deadlock: not every thread reached")],
                         ids=["early-return", "divergent-shuffle"])
def test_divergent_barriers_abort_with_a_message(libraries, which, message):
    """A barrier that not every thread of the block reaches stops the run, with a message."""
    library = str(libraries["kernels"])
    code = f"import ctypes; ctypes.CDLL({library!r}).vk_selftest_divergent({which})"
    env = dict(os.environ, **SANITIZER_OPTIONS, CUDA_EMULATION_TIMEOUT="2",
               LD_PRELOAD=build.preload("asan") or "")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-3000:]


CONCURRENCY_CHECKS = ["-k", ("test_loss or test_finish or test_mixture or test_warp or "
                             "test_shared or missing")]


@pytest.mark.slow
def test_emulated_kernels_under_scheduling_jitter(libraries, tmp_path):
    """Random yields and sleeps before every barrier, blocks in reverse order."""
    run = run_checks(tmp_path, "asan", libraries, *CONCURRENCY_CHECKS,
                     env={"CUDA_EMULATION_JITTER": "1"})
    run.assert_clean()
    run.assert_passed()
    assert run.passed() > 100


@pytest.mark.slow
def test_emulated_kernels_under_thread_sanitizer(emulation_cache, tmp_path):
    """No data race between the threads of a block (the planted race is left out)."""
    try:
        (kernels,) = build.build(emulation_cache, [("tsan", "tsan", build.CSRC)])
    except build.BuildError as e:
        pytest.fail(f"building with -fsanitize=thread failed:\n{e}")
    run = run_checks(tmp_path, "tsan", {"kernels": kernels}, *CONCURRENCY_CHECKS,
                     env={"OMP_NUM_THREADS": "1"})
    run.assert_clean()
    run.assert_passed()
    assert run.passed() > 100
