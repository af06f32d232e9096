"""``python -m vae_kernels COMMAND ...`` (also under ``torchrun -m vae_kernels train``)."""

import sys

from .cli import main

sys.exit(main())
