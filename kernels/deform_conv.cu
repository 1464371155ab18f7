// deform_conv.cu -- deformable convolution (DCNv1 arXiv 1703.06211 Eq. (2); DCNv2 arXiv 1811.11168 Eq. (1))
// by im2col: the kernels below build and differentiate the columns; the GEMMs stay in torch (cuBLAS).
//
// Layouts (contiguous, COURSE.md; the same as torchvision.ops.deform_conv2d):
//   input   [N, C, H, W]
//   offset  [N, 2*G*K, Ho, Wo]   K = kh*kw, kernel point k = i*kw + j; channel g*2K + 2k is dy, +1 is dx
//   mask    [N, G*K, Ho, Wo]     (v2 modulation; has_mask = 0 means no mask, i.e. m = 1)
//   columns [N, C*K, Ho*Wo]      row c*K + k, column y*Wo + x
// Input channel c belongs to offset group g = c / (C/G).
// Sampling position of kernel point (i, j) for output (y, x) (v1 Eq. (2): p0 + p_n + dp_n):
//   py = y*stride_h - pad_h + i*dil_h + dy,  px = x*stride_w - pad_w + j*dil_w + dx,
// sampled by rule 1 of dcn_bilinear.cuh (Eq. (3), zero outside, torchvision's position gradient).
//
// Element types: T is float, double, dcn_half or dcn_bfloat16 (dcn_common.cuh); every kernel computes in
// A = DcnAcc<T>::type (float for the 16-bit types: positions, weights and channel sums in float32). The
// columns, offset/mask gradients are stored as T; grad_input is accumulated with atomicAdd in an A buffer
// (float32 for 16-bit inputs; the caller converts it back), so no kernel needs a 16-bit atomic.
//
// Every kernel takes `n` (the number of work items) first and loops over it with DCN_GRID_STRIDE_LOOP.
// Unused pointer arguments (mask when has_mask == 0, grad_mask when it is not wanted) must still be valid
// pointers (any tensor); they are never dereferenced.
#include "dcn_bilinear.cuh"

// The geometry every kernel needs, unpacked from the arguments once.
struct DcnConvShape {
  dcn_index_t C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, G;
};

// Position (py, px) of kernel point k for output (y, x) of image b, offset group g.
template <typename T, typename A>
__device__ __forceinline__ void dcn_conv_position(const T* offset, const DcnConvShape& s, dcn_index_t b,
                                                  dcn_index_t g, dcn_index_t k, dcn_index_t y, dcn_index_t x,
                                                  A* py, A* px) {
  const dcn_index_t K = s.kh * s.kw, L = s.Ho * s.Wo;
  const T* off = offset + ((b * s.G + g) * 2 * K + 2 * k) * L + y * s.Wo + x;
  const dcn_index_t i = k / s.kw, j = k % s.kw;
  *py = (A)(y * s.sh - s.ph + i * s.dh) + dcn_load(off);
  *px = (A)(x * s.sw - s.pw + j * s.dw) + dcn_load(off + L);
}

#define DCN_CONV_ARGS                                                                                    \
  dcn_index_t C, dcn_index_t H, dcn_index_t W, dcn_index_t kh, dcn_index_t kw, dcn_index_t sh,          \
      dcn_index_t sw, dcn_index_t ph, dcn_index_t pw, dcn_index_t dh, dcn_index_t dw, dcn_index_t Ho,   \
      dcn_index_t Wo, dcn_index_t G
#define DCN_CONV_SHAPE DcnConvShape s = {C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, G}

// Deformable im2col, one work item per (b, c, y, x): n = N*C*Ho*Wo items.
// columns[b, c*K + k, y*Wo + x] = m * x_c(py, px)  (v2 Eq. (1) before the weights; m = 1 without mask).
template <typename T>
__global__ void deform_im2col_kernel(dcn_index_t n, const T* input, const T* offset, const T* mask,
                                     int has_mask, T* columns, DCN_CONV_ARGS) {
  DCN_CONV_SHAPE;
  typedef typename DcnAcc<T>::type A;
  const dcn_index_t K = kh * kw, L = Ho * Wo;
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t x = index % Wo, y = (index / Wo) % Ho, c = (index / L) % C, b = index / (L * C);
    const dcn_index_t g = c / (C / G);
    const T* im = input + (b * C + c) * H * W;
    T* col = columns + ((b * C + c) * K) * L + y * Wo + x;
    for (dcn_index_t k = 0; k < K; ++k) {
      A py, px;
      dcn_conv_position(offset, s, b, g, k, y, x, &py, &px);
      A v = dcn_sample(im, dcn_conv_corners(py, px, H, W));
      if (has_mask) v *= dcn_load(mask + ((b * G + g) * K + k) * L + y * Wo + x);
      dcn_store(col + k * L, v);
    }
  }
}

// Faster im2col variant, one work item per (b, g, k, y, x): n = N*G*K*Ho*Wo items. The position, corners and
// weights are computed once and reused for the C/G channels of the group (the plain kernel recomputes them
// per channel). Same result as deform_im2col_kernel.
template <typename T>
__global__ void deform_im2col_grouped_kernel(dcn_index_t n, const T* input, const T* offset, const T* mask,
                                             int has_mask, T* columns, DCN_CONV_ARGS) {
  DCN_CONV_SHAPE;
  typedef typename DcnAcc<T>::type A;
  const dcn_index_t K = kh * kw, L = Ho * Wo, cpg = C / G;
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t x = index % Wo, y = (index / Wo) % Ho, k = (index / L) % K;
    const dcn_index_t g = (index / (L * K)) % G, b = index / (L * K * G);
    A py, px;
    dcn_conv_position(offset, s, b, g, k, y, x, &py, &px);
    const DcnCorners<A> cr = dcn_conv_corners(py, px, H, W);
    const A m = has_mask ? dcn_load(mask + ((b * G + g) * K + k) * L + y * Wo + x) : A(1);
    for (dcn_index_t c = g * cpg; c < (g + 1) * cpg; ++c)
      dcn_store(columns + ((b * C + c) * K + k) * L + y * Wo + x, m * dcn_sample(input + (b * C + c) * H * W, cr));
  }
}

// col2im: gradient of the columns with respect to the input, one work item per column entry
// (b, c, k, y, x): n = N*C*K*Ho*Wo items. Each entry scatters m * grad_columns onto its in-map corners
// (atomicAdd; Eq. (3) is linear in x). grad_input must be zeroed by the caller.
template <typename T>
__global__ void deform_col2im_kernel(dcn_index_t n, const T* grad_columns, const T* offset, const T* mask,
                                     int has_mask, typename DcnAcc<T>::type* grad_input, DCN_CONV_ARGS) {
  DCN_CONV_SHAPE;
  typedef typename DcnAcc<T>::type A;
  const dcn_index_t K = kh * kw, L = Ho * Wo;
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t x = index % Wo, y = (index / Wo) % Ho, k = (index / L) % K;
    const dcn_index_t c = (index / (L * K)) % C, b = index / (L * K * C);
    const dcn_index_t g = c / (C / G);
    A py, px;
    dcn_conv_position(offset, s, b, g, k, y, x, &py, &px);
    A gcol = dcn_load(grad_columns + index);
    if (has_mask) gcol *= dcn_load(mask + ((b * G + g) * K + k) * L + y * Wo + x);
    dcn_scatter(grad_input + (b * C + c) * H * W, dcn_conv_corners(py, px, H, W), gcol);
  }
}

// Coordinate gradient: offset (and mask) gradients, one work item per (b, g, k, y, x): n = N*G*K*Ho*Wo items.
//   grad_offset[dy] = sum_{c in g} grad_col * m * d x_c(p)/dy   (likewise dx; the rule's position gradient)
//   grad_mask       = sum_{c in g} grad_col * x_c(p)
// Every output element has exactly one writer: no atomics, no zeroing needed.
template <typename T>
__global__ void deform_col2im_coord_kernel(dcn_index_t n, const T* grad_columns, const T* input,
                                           const T* offset, const T* mask, int has_mask, T* grad_offset,
                                           T* grad_mask, int want_grad_mask, DCN_CONV_ARGS) {
  DCN_CONV_SHAPE;
  typedef typename DcnAcc<T>::type A;
  const dcn_index_t K = kh * kw, L = Ho * Wo, cpg = C / G;
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t x = index % Wo, y = (index / Wo) % Ho, k = (index / L) % K;
    const dcn_index_t g = (index / (L * K)) % G, b = index / (L * K * G);
    A py, px;
    dcn_conv_position(offset, s, b, g, k, y, x, &py, &px);
    const DcnCorners<A> cr = dcn_conv_corners(py, px, H, W);
    const dcn_index_t mi = ((b * G + g) * K + k) * L + y * Wo + x;
    const A m = has_mask ? dcn_load(mask + mi) : A(1);
    A gy = A(0), gx = A(0), gm = A(0);
    for (dcn_index_t c = g * cpg; c < (g + 1) * cpg; ++c) {
      const A gcol = dcn_load(grad_columns + ((b * C + c) * K + k) * L + y * Wo + x);
      A v, dvy, dvx;
      dcn_sample_grad(input + (b * C + c) * H * W, cr, &v, &dvy, &dvx);
      gy += gcol * dvy;  gx += gcol * dvx;  gm += gcol * v;
    }
    T* go = grad_offset + ((b * G + g) * 2 * K + 2 * k) * L + y * Wo + x;
    dcn_store(go, m * gy);
    dcn_store(go + L, m * gx);
    if (want_grad_mask) dcn_store(grad_mask + mi, gm);
  }
}

// Fused backward (faster variant): col2im and the coordinate gradient in one pass, one work item per
// (b, g, k, y, x). Each item computes its position and corners once, reads each of its C/G column entries
// once, scatters them into grad_input (atomicAdd) and accumulates the offset/mask gradients in registers.
// Replaces deform_col2im_kernel + deform_col2im_coord_kernel (same results; grad_input zeroed by the caller).
template <typename T>
__global__ void deform_col2im_fused_kernel(dcn_index_t n, const T* grad_columns, const T* input,
                                           const T* offset, const T* mask, int has_mask,
                                           typename DcnAcc<T>::type* grad_input, T* grad_offset, T* grad_mask,
                                           int want_grad_mask, DCN_CONV_ARGS) {
  DCN_CONV_SHAPE;
  typedef typename DcnAcc<T>::type A;
  const dcn_index_t K = kh * kw, L = Ho * Wo, cpg = C / G;
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t x = index % Wo, y = (index / Wo) % Ho, k = (index / L) % K;
    const dcn_index_t g = (index / (L * K)) % G, b = index / (L * K * G);
    A py, px;
    dcn_conv_position(offset, s, b, g, k, y, x, &py, &px);
    const DcnCorners<A> cr = dcn_conv_corners(py, px, H, W);
    const dcn_index_t mi = ((b * G + g) * K + k) * L + y * Wo + x;
    const A m = has_mask ? dcn_load(mask + mi) : A(1);
    A gy = A(0), gx = A(0), gm = A(0);
    for (dcn_index_t c = g * cpg; c < (g + 1) * cpg; ++c) {
      const A gcol = dcn_load(grad_columns + ((b * C + c) * K + k) * L + y * Wo + x);
      A v, dvy, dvx;
      dcn_sample_grad(input + (b * C + c) * H * W, cr, &v, &dvy, &dvx);
      gy += gcol * dvy;  gx += gcol * dvx;  gm += gcol * v;
      dcn_scatter(grad_input + (b * C + c) * H * W, cr, m * gcol);
    }
    T* go = grad_offset + ((b * G + g) * 2 * K + 2 * k) * L + y * Wo + x;
    dcn_store(go, m * gy);
    dcn_store(go + L, m * gx);
    if (want_grad_mask) dcn_store(grad_mask + mi, gm);
  }
}
