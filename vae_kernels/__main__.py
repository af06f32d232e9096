"""``python -m vae_kernels COMMAND ...`` (also under ``torchrun -m vae_kernels train``).

The command line belongs to the reference VAE application, ``vae_kernels.app.cli``.
"""

import sys

from .app.cli import main

sys.exit(main())
