"""Builds the CUDA kernels of csrc/cuda into a host shared library with g++ against the
emulation headers of include/ (put first on the include path, so `#include
<cuda_runtime.h>` finds the stand-ins), plus runtime.cpp, wrapper.cpp and selftest.cu.

Objects and libraries are cached under ``cache_dir``, keyed by a hash of everything that
goes into them (sources, every header, flags, compiler version), so a re-run with
unchanged sources links nothing and a change recompiles only what it touches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
INCLUDE = HERE / "include"
KERNEL_SOURCES = sorted((CSRC / "cuda").glob("*.cu"))
EMULATION_SOURCES = [HERE / "runtime.cpp", HERE / "wrapper.cpp", HERE / "selftest.cu"]

SANITIZERS = {
    "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
    "tsan": ["-fsanitize=thread"],
    "none": [],
}
RUNTIME_LIBRARY = {"asan": "libasan.so", "tsan": "libtsan.so"}


class BuildError(RuntimeError):
    pass


def compiler() -> str | None:
    return os.environ.get("VK_EMULATION_CXX") or shutil.which("g++")


def preload(sanitizer: str) -> str | None:
    """The sanitizer runtime a Python process must LD_PRELOAD to load the library."""
    if sanitizer not in RUNTIME_LIBRARY:
        return None
    out = subprocess.run([compiler(), f"-print-file-name={RUNTIME_LIBRARY[sanitizer]}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out if os.path.isabs(out) else None


def flags(sanitizer: str) -> list[str]:
    return ["-std=c++17", "-O1", "-g", "-fPIC", "-pthread", "-Wall", "-Wextra",
            "-fno-omit-frame-pointer", *SANITIZERS[sanitizer]]


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _dependencies(source: Path, csrc: Path) -> list[Path]:
    """The headers a source may include: the kernels every header of csrc/cuda, csrc/math
    and include/; the emulation's own sources include/ and launchers.h only."""
    own = sorted(INCLUDE.glob("*.h"))
    if source.suffix == ".cu" and source.parent.name == "cuda" and source.parent.parent == csrc:
        return [*own, *sorted((csrc / "cuda").glob("*.h")), *sorted((csrc / "cuda").glob("*.cuh")),
                *sorted((csrc / "math").glob("*.h"))]
    return [*own, csrc / "cuda" / "launchers.h"]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)}\n{result.stderr[-8000:]}")


def build(cache_dir: Path, variants: list[tuple[str, str, Path]],
          jobs: int | None = None) -> list[Path]:
    """Compiles (or finds in the cache) one library per (name, sanitizer, csrc) variant,
    every object on one pool of ``jobs`` compilers; returns the libraries' paths.

    ``sanitizer`` is a key of SANITIZERS; ``csrc`` is csrc/ itself or a modified copy (the
    planted-bug self-test). Stale objects of a variant (older keys) are deleted.
    """
    cxx = compiler()
    if cxx is None:
        raise BuildError("g++ not found")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             check=True).stdout
    cache_dir.mkdir(parents=True, exist_ok=True)

    def compile_one(job: tuple[str, str, Path, Path]) -> Path:
        name, sanitizer, csrc, source = job
        deps = b"".join(p.name.encode() + p.read_bytes() for p in _dependencies(source, csrc))
        key = _digest(version, " ".join(flags(sanitizer)), deps, source.read_bytes())
        obj = cache_dir / f"{source.stem}-{name}-{key}.o"
        if not obj.exists():
            tmp = obj.with_suffix(f".{os.getpid()}.tmp")
            language = ["-x", "c++"] if source.suffix == ".cu" else []
            _run([cxx, *flags(sanitizer), "-I", str(INCLUDE), "-I", str(csrc), *language, "-c",
                  str(source), "-o", str(tmp)])
            os.replace(tmp, obj)
        return obj

    per_variant = [[(name, sanitizer, csrc, source) for source in
                    [csrc / "cuda" / p.name for p in KERNEL_SOURCES] + EMULATION_SOURCES]
                   for name, sanitizer, csrc in variants]
    # The longest compiles first (losses.cu), so the pool's tail is short.
    ordered = sorted((job for jobs_ in per_variant for job in jobs_),
                     key=lambda job: -job[3].stat().st_size)
    workers = jobs or max(1, min(len(ordered), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        objects = dict(zip(ordered, pool.map(compile_one, ordered)))
    libraries = []
    for (name, sanitizer, _), jobs_ in zip(variants, per_variant):
        objs = [objects[job] for job in jobs_]
        library = cache_dir / f"libvk_cuda_emulation-{name}-{_digest(*(o.name for o in objs))}.so"
        if not library.exists():
            tmp = library.with_suffix(f".{os.getpid()}.tmp")
            _run([cxx, "-shared", "-pthread", *SANITIZERS[sanitizer], "-o", str(tmp),
                  *map(str, objs)])
            os.replace(tmp, library)
        libraries.append(library)
        keep = {library, *objs}
        for stale in [*cache_dir.glob(f"*-{name}-*.o"), *cache_dir.glob(f"*-{name}-*.so")]:
            if stale not in keep and stale.name.split("-")[-2] == name:
                stale.unlink(missing_ok=True)
    return libraries


def copy_csrc_without_first_barrier(destination: Path) -> Path:
    """A copy of csrc/ whose block_sum (csrc/cuda/common.cuh) lacks its first
    __syncthreads(): warp 0 may then read the warp sums before the other warps wrote them."""
    copy = destination / "csrc"
    shutil.copytree(CSRC / "cuda", copy / "cuda", dirs_exist_ok=True)
    shutil.copytree(CSRC / "math", copy / "math", dirs_exist_ok=True)
    common = copy / "cuda" / "common.cuh"
    text = common.read_text()
    start = text.index("__device__ A block_sum(")
    barrier = text.index("__syncthreads();", start)
    rest = text[barrier + len("__syncthreads();"):]
    common.write_text(text[:barrier] + "/* planted: no barrier */" + rest)
    return copy
