// cuda_emulation.h -- just enough of CUDA for g++ to compile the course's kernels for the CPU emulator
// (dcn_lessons/cuda/emulator.py). Included before the kernel source. The emulator runs every thread of
// every block one after the other on one OS thread, so:
//   * blockIdx/threadIdx/blockDim/gridDim are thread_local globals set by the generated launcher before each
//     emulated thread runs;
//   * atomicAdd is a plain read-add-write (nothing runs concurrently);
//   * __syncthreads and __shared__ are NOT supported: one thread runs to completion before the next starts,
//     so a barrier cannot be honoured. Using them is a compile error naming the feature.
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>

// Kernel sources test this to pick the emulator's versions of GPU-only code (kernels/dcn_common.cuh).
#define DCN_CUDA_EMULATOR 1

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

// thread_local: two Python threads may launch at once (ctypes releases the GIL); each has its own built-ins.
static thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __syncthreads() dcn_emulator_does_not_support___syncthreads()
#define __shared__ dcn_emulator_does_not_support___shared__

using std::ceil;
using std::fabs;
using std::floor;
using std::max;
using std::min;
using std::sqrt;
using std::exp;
using std::round;
using std::fmin;
using std::fmax;


template <typename T>
inline T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
inline T __ldg(const T* p) { return *p; }

// The bit casts of the CUDA math API, and IEEE binary16 through the compiler's _Float16 (GCC >= 12, Clang):
// the GPU's cvt.rn.f16.f32 rounds to nearest even, and so does the conversion to _Float16.
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, sizeof f); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, sizeof u); return u; }
inline _Float16 dcn_emulator_bits_to_f16(unsigned short b) { _Float16 h; std::memcpy(&h, &b, sizeof h); return h; }
inline unsigned short dcn_emulator_f16_to_bits(_Float16 h) { unsigned short b; std::memcpy(&b, &h, sizeof b); return b; }
