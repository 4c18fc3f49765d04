// The CPU decode: the shared loop (decode.cpp) in one call, nothing returning to Python between
// characters; each layer's step is the CPU forward kernel for one character and each draw
// ATen's, so the text is the Python loop's for the same generator.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../decode.h"

namespace charrnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_decode_cpu(
    const at::Tensor& logits, const at::Tensor& h0, const std::optional<at::Tensor>& embedding,
    at::TensorList w_ih, at::TensorList w_hh, const c10::List<std::optional<at::Tensor>>& b_ih,
    const c10::List<std::optional<at::Tensor>>& b_hh, const at::Tensor& head_weight,
    const std::optional<at::Tensor>& head_bias, int64_t steps, double temperature,
    std::optional<int64_t> top_k, std::optional<at::Generator> generator) {
  const DecodeModel model{embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias};
  check_decode_args(logits, h0, model, steps, temperature, top_k);
  return decode_loop(logits, h0, model, steps, temperature, top_k, generator);
}

TORCH_LIBRARY_IMPL(charrnn, CPU, m) {
  m.impl("rnn_tanh_decode", &rnn_tanh_decode_cpu);
}

}  // namespace charrnn
