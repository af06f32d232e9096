"""Builds vae_kernels: setup.py drives CMake (CMakeLists.txt is the one native build
description) and places the compiled library inside the package, as vLLM does.

Install with `pip install --no-build-isolation .` after installing torch: build
isolation would fetch a different torch than the one the library must match. CMake
(>= 3.18) and Ninja come from PyPI (`pip install cmake ninja`, both in
requirements-dev.txt) when the machine has none.

The CMake build directory persists under the source tree, in
``build/cmake-torch<version>-<build type>/`` (``VK_BUILD_DIR`` overrides it), so a
re-install after a one-file change recompiles that file only. ccache is used where it
is installed. The compiler output is streamed (shown by ``pip install -v``) and kept in
``build.log`` in that directory.
"""

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
LIBRARY_FILE = "libvae_kernels_C.so"
CMAKE_MINIMUM = (3, 18)

# The reference VAE application (vae_kernels.app) and its command line: `pip install
# "vae_kernels[app]"`. The library itself (vae_kernels.*, except app) needs torch alone.
APP_REQUIRES = ["numpy", "matplotlib", "mlxtend", "tqdm"]


def _version(executable: str) -> tuple[int, ...]:
    try:
        text = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ()
    match = re.search(r"(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else ()


def find_cmake() -> str:
    """The cmake to run: PyPI's `cmake` package if installed, else one on PATH (>= 3.18)."""
    candidates = []
    try:
        import cmake  # PyPI's cmake: the binary lives inside the package

        candidates.append(str(Path(cmake.CMAKE_BIN_DIR) / "cmake"))
    except (ImportError, AttributeError):
        pass
    if shutil.which("cmake"):
        candidates.append(shutil.which("cmake"))
    for candidate in candidates:
        if _version(candidate) >= CMAKE_MINIMUM:
            return candidate
    found = ", ".join(f"{c} ({'.'.join(map(str, _version(c))) or '?'})" for c in candidates)
    raise RuntimeError(
        f"vae_kernels needs CMake >= {'.'.join(map(str, CMAKE_MINIMUM))} to build"
        + (f"; found only {found}" if found else "; none found")
        + ". Install it from PyPI: `pip install cmake ninja`, then rerun the install."
    )


def find_ninja() -> str | None:
    try:
        import ninja  # PyPI's ninja

        path = Path(ninja.BIN_DIR) / "ninja"
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    return shutil.which("ninja")


def cuda_options(torch) -> list[str]:
    """CMake options for the optional CUDA kernels (CMakeLists.txt decides and lists them).

    Built when torch has CUDA and nvcc is found; VK_WITH_CUDA=0 turns them off. A CPU-only
    torch gets VK_WITH_CUDA=OFF: nothing CUDA is looked for.
    """
    if torch.version.cuda is None or os.environ.get("VK_WITH_CUDA", "1") == "0":
        return ["-DVK_WITH_CUDA=OFF"]
    nvcc = shutil.which("nvcc")
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if nvcc is None and cuda_home and Path(cuda_home, "bin", "nvcc").exists():
        nvcc = str(Path(cuda_home, "bin", "nvcc"))
    if nvcc is None:
        return ["-DVK_WITH_CUDA=ON"]  # CMake reports that no CUDA compiler was found
    return ["-DVK_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}"]


def build_directory(torch, build_type: str, fallback: Path) -> Path:
    """A build directory that outlives the install, so rebuilds are incremental.

    One per torch version and build type (a different torch needs a fresh configure).
    Falls back to setuptools' temporary directory where the source tree is not writable.
    """
    if os.environ.get("VK_BUILD_DIR"):
        return Path(os.environ["VK_BUILD_DIR"]).resolve()
    name = f"cmake-torch{torch.__version__}-{build_type}".replace("+", "-")
    persistent = ROOT / "build" / name
    try:
        persistent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return fallback
    return persistent if os.access(persistent, os.W_OK) else fallback


def run_logged(command: list[str], cwd: Path, log_path: Path) -> None:
    """Run ``command``, streaming its output to stdout and appending it to ``log_path``."""
    line = "$ " + shlex.join(command)
    print(line, flush=True)
    with open(log_path, "a") as log:
        log.write(line + "\n")
        process = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for output in process.stdout:
            sys.stdout.write(output)
            sys.stdout.flush()
            log.write(output)
            log.flush()
        status = process.wait()
    if status:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(
            f"{shlex.join(command[:2])} ... failed with exit status {status}; "
            f"last lines of {log_path}:\n{tail}"
        )


class CMakeExtension(Extension):
    """A file of the CMake build: its CMake target and the file the target builds."""

    def __init__(self, name: str, target: str, built_file: str) -> None:
        super().__init__(name, sources=[])
        self.target = target
        self.built_file = built_file


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # the torch this package is built against

        build_type = os.environ.get("VK_BUILD_TYPE", "Release")
        build_dir = build_directory(
            torch, build_type, Path(self.build_temp).resolve() / "cmake"
        )
        build_dir.mkdir(parents=True, exist_ok=True)
        # One build at a time per directory: two installs running at once in one checkout
        # would otherwise run two ninjas over the same files.
        with open(build_dir / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"vae_kernels: waiting for another build in {build_dir}", flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
            self._build_in(ext, torch, build_type, build_dir)

    def _build_in(self, ext: Extension, torch, build_type: str, build_dir: Path) -> None:
        log_path = build_dir / "build.log"
        log_path.write_text("")
        print(f"vae_kernels: building in {build_dir} (log: {log_path})", flush=True)

        cmake = find_cmake()
        ninja = find_ninja()
        generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
        launcher = []
        ccache = shutil.which("ccache")
        if ccache:
            launcher = [
                f"-DCMAKE_CXX_COMPILER_LAUNCHER={ccache}",
                f"-DCMAKE_CUDA_COMPILER_LAUNCHER={ccache}",
            ]
        configure = [
            cmake,
            str(ROOT),
            *generator,
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            *launcher,
            *cuda_options(torch),
            "-DVK_PYTHON_MODULE=ON",
        ]
        # Configure only when the options changed (or never ran): find_package(Torch) takes
        # seconds, and the build step re-runs CMake by itself when CMakeLists.txt changes.
        stamp = build_dir / "configure-command.txt"
        cache = build_dir / "CMakeCache.txt"
        wanted = "\n".join(configure)
        if cache.exists() and (not stamp.exists() or stamp.read_text() != wanted):
            cache.unlink()  # a changed generator or option set: configure afresh
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
        if not cache.exists():
            run_logged(configure, build_dir, log_path)
            stamp.write_text(wanted)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        run_logged(
            [cmake, "--build", ".", "--target", ext.target, "--parallel", jobs],
            build_dir,
            log_path,
        )
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy then rename: a process that has the old file loaded keeps its mapping
        # (overwriting the file in place would change the code under it).
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(build_dir / ext.built_file, partial)
        os.replace(partial, target)

    def get_ext_filename(self, ext_name: str) -> str:
        # Called with the full name and with its last part alone.
        if ext_name.split(".")[-1] == LIBRARY.name.split(".")[-1]:
            # A plain shared library (loaded with torch.ops.load_library), not a Python module.
            return os.path.join(*ext_name.split(".")[:-1], LIBRARY_FILE)
        return super().get_ext_filename(ext_name)


# The library of the ops, and the Python module of the public API's eager calls
# (csrc/python/eager_calls.cpp).
LIBRARY = CMakeExtension("vae_kernels._C", "vae_kernels_C", LIBRARY_FILE)
EAGER_CALLS = CMakeExtension("vae_kernels._eager_calls", "vae_kernels_eager_calls", "_eager_calls.so")


setup(
    name="vae_kernels",
    version="0.1.0",
    description="Fused VAE loss kernels (reparameterization, Gaussian KL, Bernoulli/Gaussian "
    "NLL, ELBO) with hand-written backward passes, as PyTorch custom operators",
    packages=find_packages(include=["vae_kernels", "vae_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={"app": APP_REQUIRES},
    entry_points={"console_scripts": ["vae-kernels=vae_kernels.app.cli:main"]},
    ext_modules=[LIBRARY, EAGER_CALLS],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
