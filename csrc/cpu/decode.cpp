// The CPU decode: the shared loop (decode.cpp) in one call, nothing returning to Python between
// characters; each layer's step is the CPU forward kernel for one character, on weights packed
// once for the whole call instead of once per character, and each draw ATen's, so the text is
// the Python loop's for the same generator.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "../decode.h"
#include "../rnn_tanh.h"

namespace charrnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_decode_cpu(
    const at::Tensor& logits, const at::Tensor& h0, const std::optional<at::Tensor>& embedding,
    at::TensorList w_ih, at::TensorList w_hh, const c10::List<std::optional<at::Tensor>>& b_ih,
    const c10::List<std::optional<at::Tensor>>& b_hh, const at::Tensor& head_weight,
    const std::optional<at::Tensor>& head_bias, int64_t steps, double temperature,
    std::optional<int64_t> top_k, std::optional<at::Generator> generator) {
  const DecodeModel model{embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias};
  check_decode_args(logits, h0, model, steps, temperature, top_k);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<PackedLayer> layers;
  for (size_t l = 0; l < w_hh.size(); ++l)
    layers.push_back(pack_layer_cpu(w_ih[l], w_hh[l], b_ih.get(l), b_hh.get(l)));
  const LayerStep layer_step = [&](int64_t l, const at::Tensor& x, const at::Tensor& h) {
    auto [output, dropped] = rnn_tanh_output_packed_cpu(x.contiguous(), h.contiguous(), layers[l],
                                                        /*dropout=*/0.0, /*seed=*/0);
    return std::tuple<at::Tensor, at::Tensor>{output, output.select(0, 0)};  // T = 1: h_n is h_1
  };
  return decode_loop(logits, h0, model, layer_step, steps, temperature, top_k, generator);
}

TORCH_LIBRARY_IMPL(charrnn, CPU, m) {
  m.impl("rnn_tanh_decode", &rnn_tanh_decode_cpu);
}

}  // namespace charrnn
