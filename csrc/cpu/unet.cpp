// The UNet's sampling forward (lightning_genmodels/diffusion/unet.py, no autograd, one timestep
// for the batch) as one op: the same ATen calls in the same order as the Python path, so the
// same bits for a batch of one chunk (larger batches run chunk by chunk: float rounding, as any
// split of a batch), with the GIL released for the whole forward instead of taken again after
// each of its ~190 ops (two sampling threads otherwise wait on each other's Python).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace lgm {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Walks the flat weight list in the order UNet.sampling_weights() writes it.
struct Weights {
  const c10::List<OptTensor>& list;
  size_t next = 0;

  OptTensor optional() {
    TORCH_CHECK(next < list.size(), "unet_sample_forward: weights end after ", list.size(), " entries");
    return list.get(next++);
  }
  at::Tensor take() {
    OptTensor t = optional();
    TORCH_CHECK(t.has_value(), "unet_sample_forward: weights[", next - 1, "] is None where a tensor is needed");
    return *t;
  }
};

struct Config {
  int64_t groups;
  int64_t heads;
  double eps;
};

at::Tensor conv(const at::Tensor& x, const at::Tensor& w, const OptTensor& b, int64_t stride, int64_t pad) {
  return at::conv2d(x, w, b, {stride, stride}, {pad, pad}, {1, 1}, 1);
}

at::Tensor norm_silu(const at::Tensor& x, Weights& w, const Config& c) {
  at::Tensor weight = w.take();
  at::Tensor bias = w.take();
  at::Tensor h = at::group_norm(x, c.groups, weight, bias, c.eps);
  return at::silu_(h);
}

// ResBlock.forward with the folded bias: silu(norm1) -> conv1 (+bias) -> silu(norm2) -> conv2, + skip.
at::Tensor res_block(const at::Tensor& x, Weights& w, const at::Tensor& folded_bias, const Config& c) {
  at::Tensor h = norm_silu(x, w, c);
  h = conv(h, w.take(), folded_bias, 1, 1);
  h = norm_silu(h, w, c);
  at::Tensor conv2_w = w.take();
  h = conv(h, conv2_w, w.take(), 1, 1);
  OptTensor skip_w = w.optional();
  OptTensor skip_b = w.optional();
  return h.add_(skip_w.has_value() ? conv(x, *skip_w, skip_b, 1, 0) : x);
}

// SelfAttention.forward: pre-GroupNorm multi-head attention over the H·W positions, residual.
at::Tensor attention(const at::Tensor& x, Weights& w, const Config& c) {
  const int64_t n = x.size(0), ch = x.size(1), h = x.size(2), wd = x.size(3);
  at::Tensor norm_w = w.take();
  at::Tensor norm_b = w.take();
  at::Tensor qkv_w = w.take();
  at::Tensor qkv = conv(at::group_norm(x, c.groups, norm_w, norm_b, c.eps), qkv_w, w.take(), 1, 0)
                       .reshape({n, 3, c.heads, ch / c.heads, h * wd});
  std::vector<at::Tensor> parts = qkv.transpose(-1, -2).contiguous().unbind(1);
  at::Tensor out = at::scaled_dot_product_attention(parts[0], parts[1], parts[2]);
  at::Tensor proj_w = w.take();
  return x + conv(out.transpose(-1, -2).reshape({n, ch, h, wd}), proj_w, w.take(), 1, 0);
}

// UpsampleConv's low-resolution path: the four 2x2 phase convolutions as one, then interleaved.
at::Tensor upsample(const at::Tensor& x, Weights& w) {
  const int64_t n = x.size(0), h = x.size(2), wd = x.size(3);
  at::Tensor phase_w = w.take();
  at::Tensor y = conv(at::pad(x, {1, 1, 1, 1}), phase_w, w.take(), 1, 0);
  const int64_t out_ch = y.size(1) / 4;
  y = y.view({n, 2, 2, out_ch, h + 1, wd + 1});
  at::Tensor out = at::empty({n, out_ch, h, 2, wd, 2}, x.options());
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t b = 0; b < 2; ++b) {
      out.select(5, b).select(3, a).copy_(y.select(2, b).select(1, a).narrow(2, a, h).narrow(3, b, wd));
    }
  }
  return out.view({n, out_ch, 2 * h, 2 * wd});
}

// The whole forward of one chunk of images.
at::Tensor forward_chunk(const at::Tensor& x, const c10::List<OptTensor>& weights, at::TensorList folded_biases,
                         int64_t levels, int64_t blocks, const Config& c) {
  Weights w{weights};
  size_t bias = 0;

  at::Tensor conv_in_w = w.take();
  at::Tensor h = conv(x, conv_in_w, w.take(), 1, 1);
  std::vector<at::Tensor> skips;
  for (int64_t level = 0; level < levels; ++level) {
    for (int64_t i = 0; i < blocks; ++i) h = res_block(h, w, folded_biases[bias++], c);
    skips.push_back(h);
    if (level + 1 < levels) {
      at::Tensor down_w = w.take();
      h = conv(h, down_w, w.take(), 2, 1);
    }
  }
  h = res_block(h, w, folded_biases[bias++], c);
  h = attention(h, w, c);
  h = res_block(h, w, folded_biases[bias++], c);
  for (int64_t level = levels - 1; level >= 0; --level) {
    h = at::cat({h, skips.back()}, 1);
    skips.pop_back();
    for (int64_t i = 0; i < blocks; ++i) h = res_block(h, w, folded_biases[bias++], c);
    if (level > 0) h = upsample(h, w);
  }
  h = norm_silu(h, w, c);
  at::Tensor conv_out_w = w.take();
  h = conv(h, conv_out_w, w.take(), 1, 1);
  TORCH_CHECK(w.next == weights.size(), "unet_sample_forward: ", weights.size() - w.next,
              " weights left over after the last layer");
  return h;
}

// Images per chunk, where the op runs on one intra-op thread (Diffusion.sample's split): at most
// kChunkImages, and the first convolution's output of a chunk at most that of 12 images of the
// 16-channel 28x28 UNet. At 32 images a thread, every forward took ~4,500 page faults: glibc's
// per-thread arenas hand the freed memory back to the kernel and the next forward touches fresh
// pages. A/B in fresh processes (2-core Xeon, sample(64) over two threads, against no chunks):
// 16 channels, chunks of 12 0.88x the time (8: 0.93x, 16: 0.95x; AVX2 path 0.94x); 32 channels,
// 6 images 0.95x (12: 1.0x); 8 channels, 12 images 0.96x (24: 1.02x). A team of two intra-op
// threads keeps its faults in chunks (the main arena) and loses parallel work (12 images 1.24x,
// 24 1.07x), so it runs the batch whole.
constexpr int64_t kChunkImages = 12;
constexpr int64_t kChunkBytes = kChunkImages * 16 * 28 * 28 * sizeof(float);

int64_t chunk_images(const at::Tensor& x, const c10::List<OptTensor>& weights) {
  const OptTensor first = weights.size() ? weights.get(0) : OptTensor();
  if (at::get_num_threads() > 1 || !first.has_value() || first->dim() != 4) return x.size(0);
  const int64_t per_image = first->size(0) * x.size(2) * x.size(3) * static_cast<int64_t>(x.element_size());
  return std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(per_image, 1), 1, kChunkImages);
}

at::Tensor unet_sample_forward(const at::Tensor& x, const c10::List<OptTensor>& weights,
                               at::TensorList folded_biases, at::IntArrayRef config, double eps) {
  TORCH_CHECK(config.size() == 4, "unet_sample_forward: config must be [levels, num_res_blocks, groups, heads], got ",
              config);
  const int64_t levels = config[0], blocks = config[1];
  TORCH_CHECK(levels >= 1 && blocks >= 1 && config[2] >= 1 && config[3] >= 1,
              "unet_sample_forward: config entries must be positive, got ", config);
  TORCH_CHECK(static_cast<int64_t>(folded_biases.size()) == (2 * levels * blocks + 2),
              "unet_sample_forward: expected ", 2 * levels * blocks + 2, " folded biases (one per block), got ",
              folded_biases.size());
  TORCH_CHECK(x.dim() == 4, "unet_sample_forward: x must be [N, C, H, W], got ", x.sizes());
  const Config c{config[2], config[3], eps};
  const int64_t n = x.size(0), chunk = chunk_images(x, weights);
  if (n <= chunk) return forward_chunk(x, weights, folded_biases, levels, blocks, c);
  std::vector<at::Tensor> parts;
  for (const at::Tensor& part : x.split(chunk))
    parts.push_back(forward_chunk(part, weights, folded_biases, levels, blocks, c));
  return at::cat(parts);
}

}  // namespace
}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CompositeExplicitAutograd, m) {
  m.impl("unet_sample_forward", &lgm::unet_sample_forward);
}
