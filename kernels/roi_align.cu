// roi_align.cu -- the aligned (bilinearly sampled) RoI pooling family in one forward and one backward kernel:
//   roi_align (aligned=True)            DCNv1 (arXiv 1703.06211) Eq. (5), sampled (Mask R-CNN)
//   deform_roi_pool                     DCNv1 Eq. (6): bin (i, j) moves by gamma*(off_x*roi_w, off_y*roi_h)
//   modulated deform_roi_pool           DCNv2 (arXiv 1811.11168) Eq. (2): times mask m_ij
//   ps_roi_align / deform_ps_roi_pool   DCNv1 Sec. 2.2 (R-FCN): output channel c of bin (i, j) reads
//                                       input channel (c*ph + i)*pw + j
// selected by the arguments: has_offset, has_mask, position_sensitive.
//
// Layouts (contiguous): input [N, C_in, H, W]; rois [K, 5] rows (batch, x1, y1, x2, y2) in image pixels;
// offset [K, 2, ph, pw] (channel 0 = x, 1 = y, normalised); mask [K, 1, ph, pw]; output [K, C_out, ph, pw].
// Geometry (torchvision roi_align aligned=True): start = corner*spatial_scale - 0.5, size (x2-x1)*scale
// (not clamped), bins size/p, sampling_ratio > 0 samples per bin side else ceil(bin size); the bin value is the
// sum of its samples (rule 2 of dcn_bilinear.cuh) divided by max(gh*gw, 1).
// Unused pointer arguments must still be valid pointers (any tensor); they are never dereferenced.
#include "dcn_bilinear.cuh"

// Everything one bin needs: where its RoI starts (moved by the offset), bin size, grid and sample count.
template <typename T>
struct DcnRoiBin {
  dcn_index_t batch;
  T y0, x0;        // top-left of bin (i, j), offset included
  T bin_h, bin_w;  // bin size
  T roi_h, roi_w;  // RoI size (the offset's scale)
  dcn_index_t gh, gw;
  T count;         // max(gh*gw, 1)
};

template <typename T>
__device__ __forceinline__ DcnRoiBin<T> dcn_roi_bin(const T* rois, const T* offset, int has_offset,
                                                    dcn_index_t r, dcn_index_t i, dcn_index_t j, dcn_index_t ph,
                                                    dcn_index_t pw, T spatial_scale, dcn_index_t sampling_ratio,
                                                    T gamma) {
  DcnRoiBin<T> bn;
  const T* roi = rois + r * 5;
  bn.batch = (dcn_index_t)roi[0];
  const T xs = roi[1] * spatial_scale - T(0.5), ys = roi[2] * spatial_scale - T(0.5);
  bn.roi_w = (roi[3] - roi[1]) * spatial_scale;
  bn.roi_h = (roi[4] - roi[2]) * spatial_scale;
  bn.bin_h = bn.roi_h / (T)ph;
  bn.bin_w = bn.roi_w / (T)pw;
  bn.gh = sampling_ratio > 0 ? sampling_ratio : (dcn_index_t)ceil(bn.bin_h);
  bn.gw = sampling_ratio > 0 ? sampling_ratio : (dcn_index_t)ceil(bn.bin_w);
  if (bn.gh < 0) bn.gh = 0;
  if (bn.gw < 0) bn.gw = 0;
  bn.count = (T)(bn.gh * bn.gw > 1 ? bn.gh * bn.gw : 1);
  T dy = T(0), dx = T(0);
  if (has_offset) {
    const T* off = offset + r * 2 * ph * pw + i * pw + j;
    dx = gamma * bn.roi_w * off[0];
    dy = gamma * bn.roi_h * off[ph * pw];
  }
  bn.y0 = ys + dy + (T)i * bn.bin_h;
  bn.x0 = xs + dx + (T)j * bn.bin_w;
  return bn;
}

#define DCN_ROI_ARGS                                                                                  \
  dcn_index_t C_in, dcn_index_t H, dcn_index_t W, dcn_index_t C_out, dcn_index_t ph, dcn_index_t pw, \
      T spatial_scale, dcn_index_t sampling_ratio, T gamma, int position_sensitive

// Forward, one work item per output element (r, c, i, j): n = K*C_out*ph*pw.
template <typename T>
__global__ void roi_align_forward_kernel(dcn_index_t n, const T* input, const T* rois, const T* offset,
                                        int has_offset, const T* mask, int has_mask, T* output, DCN_ROI_ARGS) {
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t j = index % pw, i = (index / pw) % ph, c = (index / (pw * ph)) % C_out;
    const dcn_index_t r = index / (pw * ph * C_out);
    const DcnRoiBin<T> bn = dcn_roi_bin(rois, offset, has_offset, r, i, j, ph, pw, spatial_scale,
                                        sampling_ratio, gamma);
    const dcn_index_t cin = position_sensitive ? (c * ph + i) * pw + j : c;
    const T* im = input + (bn.batch * C_in + cin) * H * W;
    T sum = T(0);
    for (dcn_index_t u = 0; u < bn.gh; ++u) {
      const T y = bn.y0 + ((T)u + T(0.5)) * bn.bin_h / (T)bn.gh;
      for (dcn_index_t v = 0; v < bn.gw; ++v) {
        const T x = bn.x0 + ((T)v + T(0.5)) * bn.bin_w / (T)bn.gw;
        sum += dcn_sample(im, dcn_roi_corners(y, x, H, W));
      }
    }
    T out = sum / bn.count;
    if (has_mask) out *= mask[(r * ph + i) * pw + j];
    output[index] = out;
  }
}

// Backward, one work item per output element. grad_input, grad_offset and grad_mask must be zeroed by the
// caller (several channels share one bin's offset and mask: atomicAdd).
//   grad_input  += m * g / count * w  on each sample's corners
//   grad_offset += m * gamma * roi_w * (sum_samples g * d x(p)/dx) / count   (channel 0; roi_h, y for 1)
//   grad_mask   += g * (bin value before the mask)
template <typename T>
__global__ void roi_align_backward_kernel(dcn_index_t n, const T* grad_output, const T* input, const T* rois,
                                         const T* offset, int has_offset, const T* mask, int has_mask,
                                         T* grad_input, T* grad_offset, int want_grad_offset, T* grad_mask,
                                         int want_grad_mask, DCN_ROI_ARGS) {
  DCN_GRID_STRIDE_LOOP(index, n) {
    const dcn_index_t j = index % pw, i = (index / pw) % ph, c = (index / (pw * ph)) % C_out;
    const dcn_index_t r = index / (pw * ph * C_out);
    const DcnRoiBin<T> bn = dcn_roi_bin(rois, offset, has_offset, r, i, j, ph, pw, spatial_scale,
                                        sampling_ratio, gamma);
    const dcn_index_t cin = position_sensitive ? (c * ph + i) * pw + j : c;
    const dcn_index_t plane = (bn.batch * C_in + cin) * H * W;
    const T g = grad_output[index];
    const T m = has_mask ? mask[(r * ph + i) * pw + j] : T(1);
    const T gs = m * g / bn.count;
    T sum = T(0), sdy = T(0), sdx = T(0);
    for (dcn_index_t u = 0; u < bn.gh; ++u) {
      const T y = bn.y0 + ((T)u + T(0.5)) * bn.bin_h / (T)bn.gh;
      for (dcn_index_t v = 0; v < bn.gw; ++v) {
        const T x = bn.x0 + ((T)v + T(0.5)) * bn.bin_w / (T)bn.gw;
        const DcnCorners<T> cr = dcn_roi_corners(y, x, H, W);
        dcn_scatter(grad_input + plane, cr, gs);
        if (want_grad_offset || want_grad_mask) {
          T val, dvy, dvx;
          dcn_sample_grad(input + plane, cr, &val, &dvy, &dvx);
          sum += val;  sdy += dvy;  sdx += dvx;
        }
      }
    }
    const dcn_index_t bi = r * 2 * ph * pw + i * pw + j;
    if (want_grad_offset) {
      atomicAdd(grad_offset + bi, gs * gamma * bn.roi_w * sdx);
      atomicAdd(grad_offset + bi + ph * pw, gs * gamma * bn.roi_h * sdy);
    }
    if (want_grad_mask) atomicAdd(grad_mask + (r * ph + i) * pw + j, g * sum / bn.count);
  }
}
