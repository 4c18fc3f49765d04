// Fused generation from a CharRNN of tanh layers: embedding (or one-hot) -> L fused tanh layers
// -> linear head -> temperature / top-k -> a draw, for `steps` steps and B samples in one call.
// Shapes: B samples, V vocabulary, E embedding size (V for one-hot input), H hidden units,
// L layers. Every step computes what CharRNN.forward and charrnn_ext.sample.pick compute, with
// the same ATen ops and kernels in the same order, so the text equals the Python loop's for the
// same generator state.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <functional>
#include <tuple>

namespace charrnn {

// The model of a decode call, as its tensors come from CharRNN's parameters.
struct DecodeModel {
  const std::optional<at::Tensor>& embedding;    // [V, E], or None: one-hot input (E = V)
  at::TensorList w_ih;                           // L x [H, E] (layer 0), [H, H] (layers 1..)
  at::TensorList w_hh;                           // L x [H, H]
  const c10::List<std::optional<at::Tensor>>& b_ih;  // L x [H] or None
  const c10::List<std::optional<at::Tensor>>& b_hh;  // L x [H] or None
  const at::Tensor& head_weight;                 // [V, H]
  const std::optional<at::Tensor>& head_bias;    // [V] or None
};

// Returns (ids, h_n, logits_n).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_decode_cpu(
    const at::Tensor& logits,                           // [B, V] logits of the first draw
    const at::Tensor& h0,                               // [L, B, H] state after the prime
    const std::optional<at::Tensor>& embedding,         // [V, E] or None
    at::TensorList w_ih,                                // L x [H, E or H]
    at::TensorList w_hh,                                // L x [H, H]
    const c10::List<std::optional<at::Tensor>>& b_ih,   // L x [H] or None
    const c10::List<std::optional<at::Tensor>>& b_hh,   // L x [H] or None
    const at::Tensor& head_weight,                      // [V, H]
    const std::optional<at::Tensor>& head_bias,         // [V] or None
    int64_t steps,                                      // >= 0
    double temperature,                                 // >= 0; 0: argmax
    std::optional<int64_t> top_k,                       // >= 1 or None
    std::optional<at::Generator> generator);            // None: the default generator
// ids [B, steps] int64 (the drawn ids), h_n [L, B, H] (the state after the last id),
// logits_n [B, V] (the logits after the last id: the next call's `logits`)

// One layer's step: (x [1, B, E or H], h [B, H]) -> (output [1, B, H], h_n [B, H]), computing
// what the registered rnn_tanh_forward computes for layer `layer` of the model with T = 1 (what
// FusedRNN calls for a one-character window), float for float.
using LayerStep = std::function<std::tuple<at::Tensor, at::Tensor>(
    int64_t layer, const at::Tensor& x, const at::Tensor& h)>;

// The step through the dispatcher: the device's registered rnn_tanh_forward.
LayerStep dispatched_layer_step(const DecodeModel& model);

// The decode loop on any device: each layer's step `layer_step`, the head at::linear, the draw
// pick_next. Same arguments and results as rnn_tanh_decode_cpu.
std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_loop(
    const at::Tensor& logits, const at::Tensor& h0, const DecodeModel& model,
    const LayerStep& layer_step, int64_t steps, double temperature, std::optional<int64_t> top_k,
    const std::optional<at::Generator>& generator);

// Argument validation shared by every device's decode; throws c10::Error naming the argument,
// its shape and what was expected.
void check_decode_args(const at::Tensor& logits, const at::Tensor& h0, const DecodeModel& model,
                       int64_t steps, double temperature, std::optional<int64_t> top_k);
}  // namespace charrnn
