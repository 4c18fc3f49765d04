// The CPU decode: the whole loop in one call, the products straight through BLAS on buffers
// allocated once, the draw through ATen's softmax and exponential noise.
// Each product is the BLAS call that the Python loop's ops make for the same operands:
// at::addmm's for the input projections and the head, the fused forward kernel's step
// (cpu_common.h, split over the same columns) for the recurrence. So the floats, and the
// drawn text, are the same.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstring>
#include <limits>
#include <vector>

#include "../decode.h"
#include "cpu_common.h"

namespace charrnn {
namespace {

// y [B, N] (row stride ldy) = x [B, K] w [N, K]^T + beta * y, all row-major: the call at::addmm
// makes for these operands. Column-major BLAS sees y^T = w x^T, with w read transposed.
template <typename scalar_t>
void linear_into(const scalar_t* x, int64_t B, int64_t K, const scalar_t* w, int64_t N,
                 scalar_t beta, scalar_t* y, int64_t ldy) {
  const int k = static_cast<int>(K);
  cpu::gemm("T", "N", static_cast<int>(N), static_cast<int>(B), k, w, k, x, k, beta, y,
            static_cast<int>(ldy));
}

// y [B, N] = bias broadcast over the rows (beta 1 for the product), or nothing (beta 0).
template <typename scalar_t>
scalar_t fill_bias(const scalar_t* bias, int64_t B, int64_t N, scalar_t* y) {
  if (bias == nullptr) return scalar_t(0);
  for (int64_t b = 0; b < B; ++b) std::memcpy(y + b * N, bias, N * sizeof(scalar_t));
  return scalar_t(1);
}

// sample.pick's draw: logits.float() / temperature and the top-k mask are exact in any order,
// so they are done here into `scaled` [B, V] (float); the softmax and the exponential noise of
// the draw are ATen's, with the generator, as pick's ops call them.
template <typename scalar_t>
at::Tensor draw(const at::Tensor& logits, at::Tensor& scaled, double temperature,
                std::optional<int64_t> top_k, const std::optional<at::Generator>& generator,
                std::vector<float>& row_copy) {
  if (temperature == 0) return logits.argmax(-1);
  const int64_t B = logits.size(0), V = logits.size(1);
  const float t = static_cast<float>(temperature);
  const scalar_t* y = logits.const_data_ptr<scalar_t>();
  float* s = scaled.data_ptr<float>();
  for (int64_t i = 0; i < B * V; ++i) s[i] = static_cast<float>(y[i]) / t;
  if (top_k.has_value() && *top_k < V) {
    for (int64_t b = 0; b < B; ++b) {
      float* row = s + b * V;
      row_copy.assign(row, row + V);
      std::nth_element(row_copy.begin(), row_copy.begin() + (*top_k - 1), row_copy.end(), std::greater<>());
      const float kth = row_copy[*top_k - 1];
      for (int64_t v = 0; v < V; ++v)
        if (row[v] < kth) row[v] = -std::numeric_limits<float>::infinity();
    }
  }
  // at::multinomial(probs, 1) draws argmax(probs / q) with q ~ Exp(1) from the generator (its
  // path for one sample). Drawn the same way here: its checks of probs (a dozen small ops,
  // more than the draw costs at B = 1) reduce to the NaN check below for a softmax.
  const at::Tensor probs = at::softmax(scaled, -1);
  const at::Tensor q = at::empty_like(probs).exponential_(1, generator);
  at::Tensor next = at::empty({B}, logits.options().dtype(at::kLong));
  const float *p = probs.const_data_ptr<float>(), *e = q.const_data_ptr<float>();
  int64_t* id = next.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t best = 0;
    float best_ratio = p[b * V] / e[b * V];
    for (int64_t v = 0; v < V; ++v) {
      TORCH_CHECK(!std::isnan(p[b * V + v]), "charrnn: decode: probability tensor contains either "
                  "`inf`, `nan` or element < 0 (the logits are not finite)");
      const float ratio = p[b * V + v] / e[b * V + v];
      if (ratio > best_ratio || (std::isnan(ratio) && !std::isnan(best_ratio))) {  // argmax's order
        best = v;
        best_ratio = ratio;
      }
    }
    id[b] = best;
  }
  return next;
}

template <typename scalar_t>
struct Weights {
  const scalar_t* embedding;  // [V, E] or null (one-hot)
  std::vector<const scalar_t*> w_ih, w_hh, bias;  // per layer; bias = b_ih + b_hh, or null
  const scalar_t *head_weight, *head_bias;         // [V, H], [V] or null
  int64_t E;
};

// Draws `steps` ids; `h` [L, B, H] and `logits` [B, V] hold the state and logits before the
// first draw and after the last. The buffers sit where the Python loop's tensors do relative to
// 64-byte boundaries (MKL's rounding can depend on alignment): the input and each layer's
// output in a tensor of its own, the state stacked in one [L, B, H] tensor.
template <typename scalar_t>
void decode(const Weights<scalar_t>& w, at::Tensor& h, at::Tensor& logits, int64_t* ids,
            int64_t steps, double temperature, std::optional<int64_t> top_k,
            const std::optional<at::Generator>& generator) {
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2), V = logits.size(1), E = w.E;
  at::Tensor input_buffer = at::empty({B, E}, h.options());
  std::vector<at::Tensor> outputs;
  for (int64_t l = 0; l < L; ++l) outputs.push_back(at::empty({B, H}, h.options()));
  std::vector<float> row_copy;
  at::Tensor scaled = at::empty({B, V}, logits.options().dtype(at::kFloat));
  scalar_t* input = input_buffer.data_ptr<scalar_t>();
  scalar_t* state = h.data_ptr<scalar_t>();
  scalar_t* y = logits.data_ptr<scalar_t>();
  for (int64_t s = 0; s < steps; ++s) {
    const at::Tensor next = draw<scalar_t>(logits, scaled, temperature, top_k, generator, row_copy);
    const int64_t* id = next.const_data_ptr<int64_t>();
    if (w.embedding == nullptr) std::fill(input, input + B * E, scalar_t(0));
    for (int64_t b = 0; b < B; ++b) {
      ids[b * steps + s] = id[b];
      if (w.embedding != nullptr)
        std::memcpy(input + b * E, w.embedding + id[b] * E, E * sizeof(scalar_t));
      else
        input[b * E + id[b]] = scalar_t(1);
    }
    const scalar_t* x = input;
    int64_t in = E;
    for (int64_t l = 0; l < L; ++l) {
      scalar_t* h_t = outputs[l].data_ptr<scalar_t>();
      linear_into(x, B, in, w.w_ih[l], H, fill_bias(w.bias[l], B, H, h_t), h_t, H);
      cpu::forward_step(state + l * B * H, w.w_hh[l], h_t, B, H);
      x = h_t;
      in = H;
    }
    for (int64_t l = 0; l < L; ++l)
      std::memcpy(state + l * B * H, outputs[l].const_data_ptr<scalar_t>(), B * H * sizeof(scalar_t));
    linear_into(x, B, H, w.head_weight, V, fill_bias(w.head_bias, B, V, y), y, V);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_decode_cpu(
    const at::Tensor& logits_in, const at::Tensor& h0, const std::optional<at::Tensor>& embedding_in,
    at::TensorList w_ih_in, at::TensorList w_hh_in, const c10::List<std::optional<at::Tensor>>& b_ih,
    const c10::List<std::optional<at::Tensor>>& b_hh, const at::Tensor& head_weight_in,
    const std::optional<at::Tensor>& head_bias_in, int64_t steps, double temperature,
    std::optional<int64_t> top_k, std::optional<at::Generator> generator) {
  const DecodeModel model{embedding_in, w_ih_in, w_hh_in, b_ih, b_hh, head_weight_in, head_bias_in};
  check_decode_args(logits_in, h0, model, steps, temperature, top_k);
  const int64_t L = h0.size(0), B = h0.size(1), H = h0.size(2), V = logits_in.size(1);
  const int64_t widest = std::max({H, V, embedding_in.has_value() ? embedding_in->size(1) : V});
  TORCH_CHECK_VALUE(B * widest <= std::numeric_limits<int>::max(), "charrnn: decode's B * max(H, V, E) = ",
                    B * widest, " exceeds the 32-bit BLAS index range");

  // Contiguous copies of what is not, and the layers' summed biases (FusedRNN's kernels add
  // b_ih + b_hh the same way), kept for the whole call.
  std::vector<at::Tensor> keep;
  auto dense = [&](const at::Tensor& t) { return keep.emplace_back(t.contiguous()); };
  at::Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor logits = logits_in.clone(at::MemoryFormat::Contiguous);
  at::Tensor ids = at::empty({B, steps}, h0.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "rnn_tanh_decode_cpu", [&] {
    Weights<scalar_t> w;
    w.embedding = embedding_in.has_value() ? dense(*embedding_in).const_data_ptr<scalar_t>() : nullptr;
    w.E = embedding_in.has_value() ? embedding_in->size(1) : logits.size(1);
    for (int64_t l = 0; l < L; ++l) {
      w.w_ih.push_back(dense(w_ih_in[l]).const_data_ptr<scalar_t>());
      w.w_hh.push_back(dense(w_hh_in[l]).const_data_ptr<scalar_t>());
      const std::optional<at::Tensor> sum = summed_bias(b_ih.get(l), b_hh.get(l));
      w.bias.push_back(sum.has_value() ? dense(*sum).const_data_ptr<scalar_t>() : nullptr);
    }
    w.head_weight = dense(head_weight_in).const_data_ptr<scalar_t>();
    w.head_bias = head_bias_in.has_value() ? dense(*head_bias_in).const_data_ptr<scalar_t>() : nullptr;
    decode(w, h, logits, ids.data_ptr<int64_t>(), steps, temperature, top_k, generator);
  });
  return {ids, h, logits};
}

TORCH_LIBRARY_IMPL(charrnn, CPU, m) {
  m.impl("rnn_tanh_decode", &rnn_tanh_decode_cpu);
}

}  // namespace charrnn
