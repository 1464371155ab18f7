// dcn_bilinear.cuh -- the two sampling rules of the course, each written once.
//
// 1. The deformable-convolution rule: DCNv1 (arXiv 1703.06211) Eq. (3)-(4) taken literally,
//      x(p) = sum_q g(q_y, p_y) g(q_x, p_x) x(q),  g(a, b) = max(0, 1 - |a - b|),
//    summed over integral q INSIDE the map. Only floor(p) and floor(p)+1 have a non-zero kernel, so
//    the four-neighbour form is exact; a corner off the map reads 0; a sample with y <= -1 or y >= H
//    (likewise x) is 0. Position gradient (torchvision/mmcv rule): 0 unless -1 < y < H and -1 < x < W;
//    inside, the derivative of the four-neighbour form with floor(p) held fixed (at an integer
//    coordinate: the forward difference x(q+1) - x(q)).
//    Used by deform_conv.cu (im2col, col2im, coordinate gradient, fused backward).
//
// 2. The RoI rule: torchvision roi_align(aligned=True) sampling. A sample with y < -1 or y > H (likewise x)
//    is 0; otherwise y <= 0 is clamped to 0, the corners are floor(y) and floor(y)+1, and when
//    floor(y) >= H-1 both corners are row H-1 (likewise x). Position gradient: the derivative of that rule
//    with the floor held fixed, 0 in a clamped direction (y <= 0 or floor(y) >= H-1) and 0 outside
//    (dcn_lessons.reference.roi._roi_bilinear). Used by roi_align.cu.
//
// Both rules reduce to the same struct: four corner indices (-1 = off the map, reads 0), four weights and
// the derivative of the weights with respect to y and x. value / scatter / position-gradient helpers below
// work on that struct, so the arithmetic of a rule lives in its setup function only.
#pragma once
#include "dcn_common.cuh"

template <typename T>
struct DcnCorners {
  dcn_index_t idx[4];  // flat index y*W + x of corners (y0,x0), (y0,x1), (y1,x0), (y1,x1); -1 = off the map
  T w[4];              // bilinear weights (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly lx
  T wy[4];             // d w / d y  (0 in a direction the rule does not differentiate)
  T wx[4];             // d w / d x
  bool inside;         // false: value and position gradient are 0
};

template <typename T>
__device__ __forceinline__ void dcn_fill_weights(DcnCorners<T>& c, T ly, T lx, T sy, T sx) {
  // sy, sx in {0, 1}: whether the value moves with y (x) under the rule.
  const T hy = T(1) - ly, hx = T(1) - lx;
  c.w[0] = hy * hx;  c.w[1] = hy * lx;  c.w[2] = ly * hx;  c.w[3] = ly * lx;
  c.wy[0] = -sy * hx; c.wy[1] = -sy * lx; c.wy[2] = sy * hx;  c.wy[3] = sy * lx;
  c.wx[0] = -sx * hy; c.wx[1] = sx * hy;  c.wx[2] = -sx * ly; c.wx[3] = sx * ly;
}

// Rule 1 (deformable convolution): DCNv1 Eq. (3)-(4), off-map corners read 0.
template <typename T>
__device__ __forceinline__ DcnCorners<T> dcn_conv_corners(T y, T x, dcn_index_t H, dcn_index_t W) {
  DcnCorners<T> c;
  // Every comparison with NaN is false, so a NaN position is "outside" too.
  c.inside = (y > T(-1) && y < T(H) && x > T(-1) && x < T(W));
  if (!c.inside) {
    for (int t = 0; t < 4; ++t) { c.idx[t] = -1; c.w[t] = T(0); c.wy[t] = T(0); c.wx[t] = T(0); }
    return c;
  }
  const T fy = floor(y), fx = floor(x);
  const dcn_index_t y0 = (dcn_index_t)fy, x0 = (dcn_index_t)fx, y1 = y0 + 1, x1 = x0 + 1;
  const bool oky0 = y0 >= 0, oky1 = y1 < H, okx0 = x0 >= 0, okx1 = x1 < W;
  c.idx[0] = (oky0 && okx0) ? y0 * W + x0 : -1;
  c.idx[1] = (oky0 && okx1) ? y0 * W + x1 : -1;
  c.idx[2] = (oky1 && okx0) ? y1 * W + x0 : -1;
  c.idx[3] = (oky1 && okx1) ? y1 * W + x1 : -1;
  dcn_fill_weights(c, y - fy, x - fx, T(1), T(1));
  return c;
}

// Rule 2 (RoI family): torchvision roi_align(aligned=True) sampling with clamping.
template <typename T>
__device__ __forceinline__ DcnCorners<T> dcn_roi_corners(T y, T x, dcn_index_t H, dcn_index_t W) {
  DcnCorners<T> c;
  c.inside = !(y < T(-1) || y > T(H) || x < T(-1) || x > T(W)) && y == y && x == x;
  if (!c.inside) {
    for (int t = 0; t < 4; ++t) { c.idx[t] = -1; c.w[t] = T(0); c.wy[t] = T(0); c.wx[t] = T(0); }
    return c;
  }
  T sy = y > T(0) ? T(1) : T(0), sx = x > T(0) ? T(1) : T(0);  // y <= 0 is clamped: no longer moves
  if (y <= T(0)) y = T(0);
  if (x <= T(0)) x = T(0);
  dcn_index_t y0 = (dcn_index_t)floor(y), x0 = (dcn_index_t)floor(x), y1, x1;
  if (y0 >= H - 1) { y0 = y1 = H - 1; y = (T)y0; sy = T(0); } else { y1 = y0 + 1; }
  if (x0 >= W - 1) { x0 = x1 = W - 1; x = (T)x0; sx = T(0); } else { x1 = x0 + 1; }
  c.idx[0] = y0 * W + x0;  c.idx[1] = y0 * W + x1;  c.idx[2] = y1 * W + x0;  c.idx[3] = y1 * W + x1;
  dcn_fill_weights(c, y - (T)y0, x - (T)x0, sy, sx);
  return c;
}

// Sampled value sum_t w_t x(corner_t) of one channel plane `im` (off-map corners read 0). The plane may be
// stored in a 16-bit type T; the weights, and the sum, are in the compute type A (dcn_common.cuh).
template <typename T, typename A>
__device__ __forceinline__ A dcn_sample(const T* im, const DcnCorners<A>& c) {
  A v = A(0);
  for (int t = 0; t < 4; ++t)
    if (c.idx[t] >= 0) v += c.w[t] * dcn_load(im + c.idx[t]);
  return v;
}

// Value and position gradient (d value/dy, d value/dx) of one channel plane, by the rule of `c`.
template <typename T, typename A>
__device__ __forceinline__ void dcn_sample_grad(const T* im, const DcnCorners<A>& c, A* value, A* dy, A* dx) {
  A v = A(0), gy = A(0), gx = A(0);
  for (int t = 0; t < 4; ++t) {
    if (c.idx[t] < 0) continue;
    const A q = dcn_load(im + c.idx[t]);
    v += c.w[t] * q;  gy += c.wy[t] * q;  gx += c.wx[t] * q;
  }
  *value = v;  *dy = gy;  *dx = gx;
}

// Gradient of the sample with respect to the map (Eq. (3) is linear in x): atomicAdd g * w_t to each corner.
// grad_im is in the compute type (a float buffer for 16-bit inputs: float32 accumulation, no 16-bit atomics).
template <typename T>
__device__ __forceinline__ void dcn_scatter(T* grad_im, const DcnCorners<T>& c, T g) {
  for (int t = 0; t < 4; ++t)
    if (c.idx[t] >= 0 && c.w[t] != T(0)) atomicAdd(grad_im + c.idx[t], g * c.w[t]);
}
