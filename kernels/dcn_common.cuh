// dcn_common.cuh -- what every kernel of the course shares: the index type and the grid-stride loop.
//
// The same source is compiled three ways: by NVRTC through CuPy (dcn_lessons.cuda.backend), by nvcc in the
// compile test, and by g++ through the CPU emulator (dcn_lessons.cuda.emulator, which first includes a header
// defining blockIdx, threadIdx, atomicAdd, ...). So: no system headers here (NVRTC has none), only built-in
// math (floor, ceil, fabs, which CUDA overloads for float and double).
#pragma once

// 64-bit index arithmetic: N*C*kh*kw*Ho*Wo overflows 32 bits on detection-sized batches.
typedef long long dcn_index_t;

// Grid-stride loop over [0, n): the loop condition is every kernel's bounds check (index >= n never runs),
// and any launch size covers any n.
#define DCN_GRID_STRIDE_LOOP(index, n)                                                      \
  for (dcn_index_t index = (dcn_index_t)blockIdx.x * blockDim.x + threadIdx.x; index < (n); \
       index += (dcn_index_t)blockDim.x * gridDim.x)
