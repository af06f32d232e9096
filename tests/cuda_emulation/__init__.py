"""Host emulation of the CUDA programming model: runs csrc/cuda/*.cu on the CPU in tests
(tests/test_cuda_emulation.py drives it; include/cuda_emulation.h explains the model)."""
