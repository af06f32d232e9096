"""Run the Triton kernels on CPU through the Triton interpreter when there is no GPU.

TRITON_INTERPRET=1 takes effect only if it is set before triton is first imported
(Triton's own library functions, such as tl.randn, are compiled-only otherwise), so it
is set here, while this directory is collected, if nothing has imported triton yet.
If something already has (``import torch._dynamo`` imports triton, for instance),
the tests here skip in this process and ``test_triton_subprocess.py`` runs this
directory in a fresh Python process with TRITON_INTERPRET=1 instead.
"""

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
