// The CUDA decode: the shared loop (decode.cpp) on the current stream, each layer's step the
// CUDA forward kernel for one character (rnn_tanh_forward through the dispatcher) and each
// draw ATen's, so that a GPU draws the text that the Python loop draws on it. Between steps
// nothing returns to Python, but each step is still several launches; a persistent decode
// kernel would remove them.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../decode.h"

namespace charrnn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_decode_cuda(
    const at::Tensor& logits, const at::Tensor& h0, const std::optional<at::Tensor>& embedding,
    at::TensorList w_ih, at::TensorList w_hh, const c10::List<std::optional<at::Tensor>>& b_ih,
    const c10::List<std::optional<at::Tensor>>& b_hh, const at::Tensor& head_weight,
    const std::optional<at::Tensor>& head_bias, int64_t steps, double temperature,
    std::optional<int64_t> top_k, std::optional<at::Generator> generator) {
  const DecodeModel model{embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias};
  check_decode_args(logits, h0, model, steps, temperature, top_k);
  TORCH_CHECK_VALUE(h0.is_cuda(), "charrnn: decode's h0 must be a CUDA tensor for the CUDA kernels, got ",
                    h0.device());
  const c10::cuda::CUDAGuard device_guard(h0.device());
  return decode_loop(logits, h0, model, dispatched_layer_step(model), steps, temperature, top_k,
                     generator);
}

}  // namespace

TORCH_LIBRARY_IMPL(charrnn, CUDA, m) {
  m.impl("rnn_tanh_decode", &rnn_tanh_decode_cuda);
}

}  // namespace charrnn
