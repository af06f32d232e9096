// Stand-in for the CUDA toolkit's header of the same name: the host emulation of
// cuda_emulation.h (tests only).
#pragma once
#include "cuda_emulation.h"
