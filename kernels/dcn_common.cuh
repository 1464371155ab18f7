// dcn_common.cuh -- what every kernel of the course shares: the index type, the grid-stride loop and the
// element types (float, double, and float16/bfloat16 stored in 16 bits, computed in float).
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

// ---- Element types. float and double are stored and computed as themselves. The two 16-bit formats are
// stored as 16-bit patterns and computed in float (float32 accumulation): dcn_load widens, dcn_store rounds
// to nearest even (what torch's .half() / .bfloat16() do). They are plain structs, not cuda_fp16.h's __half,
// because NVRTC has no headers: a kernel receives a torch float16/bfloat16 tensor's pointer as dcn_half* /
// dcn_bfloat16*. DcnAcc<T>::type is the type a kernel computes in.
struct dcn_half { unsigned short bits; };
struct dcn_bfloat16 { unsigned short bits; };

template <typename T> struct DcnAcc { typedef T type; };
template <> struct DcnAcc<dcn_half> { typedef float type; };
template <> struct DcnAcc<dcn_bfloat16> { typedef float type; };

#if defined(__CUDA_ARCH__)
// On the GPU (NVRTC or nvcc's device pass): the hardware conversions (PTX cvt, sm_53 and later).
__device__ __forceinline__ float dcn_half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short dcn_float_to_half(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#elif defined(DCN_CUDA_EMULATOR)
// In the CPU emulator: the compiler's IEEE binary16 (_Float16), the same round-to-nearest-even as cvt.rn.
__device__ __forceinline__ float dcn_half_to_float(unsigned short h) { return (float)dcn_emulator_bits_to_f16(h); }
__device__ __forceinline__ unsigned short dcn_float_to_half(float f) { return dcn_emulator_f16_to_bits((_Float16)f); }
#else
// nvcc's host pass: device functions are not compiled for the host, a declaration is all it needs.
__device__ float dcn_half_to_float(unsigned short h);
__device__ unsigned short dcn_float_to_half(float f);
#endif

// bfloat16 is the top half of a float32: widening is a shift, rounding is integer arithmetic (the same code on
// the GPU and in the emulator). NaN stays a (quiet) NaN; overflow rounds to infinity as it should.
__device__ __forceinline__ float dcn_bfloat16_to_float(unsigned short b) {
  return __uint_as_float(((unsigned int)b) << 16);
}
__device__ __forceinline__ unsigned short dcn_float_to_bfloat16(float f) {
  const unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x0040u);  // NaN: keep it quiet
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                     // round to nearest even
}

__device__ __forceinline__ float dcn_load(const float* p) { return *p; }
__device__ __forceinline__ double dcn_load(const double* p) { return *p; }
__device__ __forceinline__ float dcn_load(const dcn_half* p) { return dcn_half_to_float(p->bits); }
__device__ __forceinline__ float dcn_load(const dcn_bfloat16* p) { return dcn_bfloat16_to_float(p->bits); }
__device__ __forceinline__ void dcn_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void dcn_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void dcn_store(dcn_half* p, float v) { p->bits = dcn_float_to_half(v); }
__device__ __forceinline__ void dcn_store(dcn_bfloat16* p, float v) { p->bits = dcn_float_to_bfloat16(v); }
