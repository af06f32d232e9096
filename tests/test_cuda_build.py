"""The CUDA sources compile, with no GPU and no CUDA torch: every csrc/cuda/*.cu with nvcc
(compile only; the kernels and launchers include no torch header), and the torch glue
(csrc/cuda/ops_cuda.cpp) with the host compiler against this torch's headers and the CUDA
toolkit's. Plus the bookkeeping a build on a CUDA machine relies on: CMakeLists.txt lists
every .cu file, and the glue registers every op of csrc/schemas.cpp.

Runs in CI on machines without a GPU; skipped where nvcc is not on PATH. The GPU tests
are tests/test_cuda.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
GLUE = CUDA_DIR / "ops_cuda.cpp"
NVCC = shutil.which("nvcc")
# One architecture keeps the compile short; VK_NVCC_ARCH=sm_80 etc. checks another.
ARCH = os.environ.get("VK_NVCC_ARCH", "sm_90")

requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    """Compiles every .cu file once, in parallel; {file name: CompletedProcess}."""
    out_dir = tmp_path_factory.mktemp("cuda_objects")

    def compile_one(source: Path) -> subprocess.CompletedProcess:
        return _run([NVCC, "-std=c++17", f"-arch={ARCH}", "-O3", "-I", str(ROOT / "csrc"),
                     "-Xcompiler=-Wall", "-c", str(source), "-o", str(out_dir / (source.stem + ".o"))])

    with ThreadPoolExecutor(max_workers=max(1, min(len(CU_FILES), os.cpu_count() or 1))) as pool:
        return dict(zip((f.name for f in CU_FILES), pool.map(compile_one, CU_FILES)))


def test_there_are_cuda_sources():
    names = {f.name for f in CU_FILES}
    assert {"losses.cu", "sampling.cu", "loss_backward.cu"} <= names, names


@requires_nvcc
@pytest.mark.parametrize("source", [f.name for f in CU_FILES])
def test_cu_file_compiles_with_nvcc(source, nvcc_results):
    result = nvcc_results[source]
    assert result.returncode == 0, f"nvcc -c {source} failed:\n{result.stderr[-6000:]}"


def test_cmakelists_builds_every_cu_file():
    """A .cu file missing from CMakeLists.txt would compile here but never be linked."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"csrc/cuda/([\w.]+\.cu)\b", cmake))
    assert listed == {f.name for f in CU_FILES}
    assert "csrc/cuda/ops_cuda.cpp" in cmake


def _schema_ops() -> set[str]:
    schemas = (ROOT / "csrc" / "schemas.cpp").read_text()
    return set(re.findall(r'm\.def\(\s*"(\w+)\(', schemas))


def test_glue_registers_every_op_for_cuda():
    glue = GLUE.read_text()
    assert "TORCH_LIBRARY_IMPL(vae_kernels, CUDA, m)" in glue
    registered = set(re.findall(r'm\.impl\("(\w+)"', glue))
    ops = _schema_ops()
    assert len(ops) >= 9, ops  # the parser still finds the schemas
    assert registered == ops


def test_kernels_include_no_torch_header():
    """The launchers must stay compilable where torch has no CUDA (this machine)."""
    for path in [*CU_FILES, *CUDA_DIR.glob("*.cuh"), CUDA_DIR / "launchers.h"]:
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", path.read_text())
        torch_includes = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")]
        assert not torch_includes, (path.name, torch_includes)


def _cuda_include_dir() -> Path | None:
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 str(Path(NVCC).resolve().parents[1]) if NVCC else None, "/usr/local/cuda"):
        if base and (Path(base) / "include" / "cuda_runtime_api.h").exists():
            return Path(base) / "include"
    return None


def test_glue_compiles_against_torch_and_cuda_headers(tmp_path):
    """ops_cuda.cpp, syntax and types, against this torch's c10/cuda headers. A CPU-only
    torch ships those headers but not the generated c10/cuda/impl/cuda_cmake_macros.h,
    which a stand-in provides here. Not linked, not run (that needs a CUDA torch)."""
    pytest.importorskip("torch")
    from torch.utils.cpp_extension import include_paths

    torch_includes = [Path(p) for p in include_paths()]
    if not any((p / "c10" / "cuda" / "CUDAStream.h").exists() for p in torch_includes):
        pytest.skip("this torch ships no c10/cuda headers")
    cuda_include = _cuda_include_dir()
    if cuda_include is None:
        pytest.skip("no CUDA toolkit include directory found")
    stub_dir = tmp_path / "stub"
    if not any((p / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in torch_includes):
        (stub_dir / "c10/cuda/impl").mkdir(parents=True)
        (stub_dir / "c10/cuda/impl/cuda_cmake_macros.h").write_text(
            "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler")
    # The language level of CMakeLists.txt (CMAKE_CXX_STANDARD).
    command = [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra",
               *(f"-isystem{p}" for p in [stub_dir, *torch_includes, cuda_include]), str(GLUE)]
    result = _run(command)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-6000:]}"
    own_warnings = [line for line in result.stderr.splitlines() if "ops_cuda.cpp" in line and "warning" in line]
    assert not own_warnings, "\n".join(own_warnings)
