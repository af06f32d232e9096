"""Builds vae_kernels: setup.py drives CMake (CMakeLists.txt is the one native build
description) and places the compiled library inside the package, as vLLM does.

Install with `pip install --no-build-isolation .` after installing torch: build
isolation would fetch a different torch than the one the library must match.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
LIBRARY_FILE = "libvae_kernels_C.so"


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


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # the torch this package is built against

        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = [
            "cmake",
            str(ROOT),
            *generator,
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('VK_BUILD_TYPE', 'Release')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            *cuda_options(torch),
        ]
        subprocess.run(configure, cwd=build_dir, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(
            ["cmake", "--build", ".", "--target", "vae_kernels_C", "--parallel", jobs],
            cwd=build_dir,
            check=True,
        )
        target = Path(self.get_ext_fullpath(ext.name))  # vae_kernels/libvae_kernels_C.so
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_dir / LIBRARY_FILE, target)

    def get_ext_filename(self, ext_name: str) -> str:
        # A plain shared library (loaded with torch.ops.load_library), not a Python module.
        return os.path.join(*ext_name.split(".")[:-1], LIBRARY_FILE)


setup(
    name="vae_kernels",
    version="0.1.0",
    description="Fused VAE loss kernels (reparameterization, Gaussian KL, Bernoulli/Gaussian "
    "NLL, ELBO) with hand-written backward passes, as PyTorch custom operators",
    packages=find_packages(include=["vae_kernels", "vae_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "matplotlib", "mlxtend"],
    entry_points={"console_scripts": ["vae-kernels=vae_kernels.app.cli:main"]},
    ext_modules=[CMakeExtension("vae_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
