// The decode loop and its checks, for every device: each step is the ATen ops and the layer
// kernel that CharRNN.forward and sample.pick run for one character, in the same order.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>

#include "decode.h"

namespace charrnn {

namespace {

void check_like(const at::Tensor& t, const std::string& name, int64_t dim, const char* shape,
                const at::Tensor& h0) {
  TORCH_CHECK_VALUE(t.dim() == dim, "charrnn: decode's ", name, " must have shape ", shape,
                    ", got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == h0.scalar_type(), "charrnn: decode's ", name,
                   " must have the dtype of h0 (", h0.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == h0.device(), "charrnn: decode's ", name,
                    " must be on the device of h0 (", h0.device(), "), got ", t.device());
}

void check_sizes(const at::Tensor& t, const std::string& name, const char* shape,
                 std::initializer_list<int64_t> expected) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(expected), "charrnn: decode's ", name,
                    " must have shape ", shape, " = ", at::IntArrayRef(expected), ", got ",
                    t.sizes());
}

std::string nth(const char* name, size_t l) { return std::string(name) + "[" + std::to_string(l) + "]"; }

}  // namespace

void check_decode_args(const at::Tensor& logits, const at::Tensor& h0, const DecodeModel& model,
                       int64_t steps, double temperature, std::optional<int64_t> top_k) {
  TORCH_CHECK_TYPE(h0.scalar_type() == at::kFloat || h0.scalar_type() == at::kDouble,
                   "charrnn: decode's h0 must be float32 or float64, got ", h0.scalar_type());
  TORCH_CHECK_VALUE(h0.dim() == 3 && h0.size(0) > 0 && h0.size(1) > 0 && h0.size(2) > 0,
                    "charrnn: decode's h0 must have shape [L, B, H] with L, B, H > 0, got shape ",
                    h0.sizes());
  const int64_t L = h0.size(0), B = h0.size(1), H = h0.size(2);
  const size_t layers = static_cast<size_t>(L);
  TORCH_CHECK_VALUE(model.w_ih.size() == layers && model.w_hh.size() == layers &&
                        model.b_ih.size() == layers && model.b_hh.size() == layers,
                    "charrnn: decode needs one w_ih, w_hh, b_ih and b_hh per layer of h0 [L, B, H] "
                    "(L = ", L, "), got ", model.w_ih.size(), ", ", model.w_hh.size(), ", ",
                    model.b_ih.size(), " and ", model.b_hh.size());
  check_like(model.head_weight, "head_weight", 2, "[V, H]", h0);
  const int64_t V = model.head_weight.size(0);
  TORCH_CHECK_VALUE(V > 0, "charrnn: decode's head_weight [V, H] needs V > 0");
  check_sizes(model.head_weight, "head_weight", "[V, H]", {V, H});
  if (model.head_bias.has_value()) {
    check_like(*model.head_bias, "head_bias", 1, "[V]", h0);
    check_sizes(*model.head_bias, "head_bias", "[V]", {V});
  }
  check_like(logits, "logits", 2, "[B, V]", h0);
  check_sizes(logits, "logits", "[B, V] (B from h0, V from head_weight)", {B, V});
  int64_t E = V;  // one-hot input
  if (model.embedding.has_value()) {
    check_like(*model.embedding, "embedding", 2, "[V, E]", h0);
    E = model.embedding->size(1);
    check_sizes(*model.embedding, "embedding", "[V, E] (V from head_weight)", {V, E});
  }
  for (size_t l = 0; l < layers; ++l) {
    check_like(model.w_ih[l], nth("w_ih", l), 2, "[H, E]", h0);
    check_sizes(model.w_ih[l], nth("w_ih", l), l == 0 ? "[H, E] (E from embedding, else V)" : "[H, H]",
                {H, l == 0 ? E : H});
    check_like(model.w_hh[l], nth("w_hh", l), 2, "[H, H]", h0);
    check_sizes(model.w_hh[l], nth("w_hh", l), "[H, H] (H from h0)", {H, H});
    for (const auto& [bias, name] : {std::pair{model.b_ih.get(l), "b_ih"}, {model.b_hh.get(l), "b_hh"}}) {
      if (!bias.has_value()) continue;
      check_like(*bias, nth(name, l), 1, "[H]", h0);
      check_sizes(*bias, nth(name, l), "[H]", {H});
    }
  }
  TORCH_CHECK_VALUE(steps >= 0, "charrnn: decode's steps must be >= 0, got ", steps);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0,
                    "charrnn: decode's temperature must be finite and >= 0 (0: argmax), got ",
                    temperature);
  TORCH_CHECK_VALUE(!top_k.has_value() || *top_k >= 1, "charrnn: decode's top_k must be >= 1, got ",
                    top_k.value_or(0));
}

at::Tensor pick_next(const at::Tensor& logits, double temperature, std::optional<int64_t> top_k,
                     const std::optional<at::Generator>& generator) {
  if (temperature == 0) return logits.argmax(-1);
  at::Tensor scaled = logits.to(at::kFloat).div(temperature);
  if (top_k.has_value() && *top_k < scaled.size(-1)) {
    const at::Tensor kth = std::get<0>(at::topk(scaled, *top_k, -1)).slice(1, -1);
    scaled = scaled.masked_fill(scaled < kth, -INFINITY);
  }
  const at::Tensor probs = at::softmax(scaled, -1);
  if (probs.is_cpu()) {
    // at::multinomial's draw of one sample, the argmax of probs / q with q ~ Exp(1) from the
    // generator, without its checks: those are five more ops and host reads per character, a
    // large share of a one-character step on the CPU (bench/bench_sample.py times generation).
    // Softmax leaves only non-finite logits to check, read here directly.
    const at::Tensor p = probs.contiguous();
    const float* data = p.const_data_ptr<float>();
    for (int64_t i = 0; i < p.numel(); ++i)
      TORCH_CHECK(std::isfinite(data[i]), "charrnn: decode: the logits are not finite, so "
                        "no character can be drawn (probability ", data[i], " at index ", i, ")");
    at::Tensor q = at::empty_like(p).exponential_(1, generator);
    at::div_out(q, p, q);
    return q.argmax(-1);
  }
  try {
    return at::multinomial(probs, 1, /*replacement=*/false, generator).squeeze(1);
  } catch (const c10::Error& e) {  // multinomial's own words, with the cause a user can act on
    TORCH_CHECK(false, "charrnn: decode: the logits are not finite, so no character can be drawn (",
                e.what_without_backtrace(), ")");
  }
}

LayerStep dispatched_layer_step(const DecodeModel& model) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("charrnn::rnn_tanh_forward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const std::optional<at::Tensor>&,
                                 const std::optional<at::Tensor>&, double, int64_t)>();
  return [&model](int64_t l, const at::Tensor& x, const at::Tensor& h) {
    auto [output, h_n, dropped] = op.call(x, h, model.w_ih[l], model.w_hh[l], model.b_ih.get(l),
                                          model.b_hh.get(l), /*dropout=*/0.0, /*seed=*/0);
    return std::tuple<at::Tensor, at::Tensor>{output, h_n};
  };
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_loop(
    const at::Tensor& logits, const at::Tensor& h0, const DecodeModel& model,
    const LayerStep& layer_step, int64_t steps, double temperature, std::optional<int64_t> top_k,
    const std::optional<at::Generator>& generator) {
  // Generation is not differentiable: the steps below run beneath autograd, as under no_grad.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t L = h0.size(0), B = h0.size(1), V = logits.size(1);
  // Each layer's state apart, stacked as FusedRNN returns it only at the end: a stack per
  // character would copy the whole state once more at every step.
  std::vector<at::Tensor> state(h0.unbind(0));

  at::Tensor ids = at::empty({B, steps}, logits.options().dtype(at::kLong));
  at::Tensor current = logits;
  for (int64_t s = 0; s < steps; ++s) {
    const at::Tensor next = pick_next(current, temperature, top_k, generator);
    ids.select(1, s).copy_(next);
    const at::Tensor idx = next.unsqueeze(0);  // [1, B]: CharRNN's time-major window of one step
    at::Tensor x = model.embedding.has_value() ? at::embedding(*model.embedding, idx)
                                               : at::one_hot(idx, V).to(h0.scalar_type());
    for (int64_t l = 0; l < L; ++l) {
      auto [output, h_last] = layer_step(l, x, state[l]);
      x = output;
      state[l] = h_last;
    }
    current = at::linear(x, model.head_weight, model.head_bias).select(0, 0);
  }
  // New tensors, never views of the inputs (steps == 0 leaves both unchanged).
  return {ids, at::stack(state), steps == 0 ? logits.clone() : current.contiguous()};
}

}  // namespace charrnn
