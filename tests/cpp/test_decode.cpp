// The device-independent decode loop (csrc/decode.cpp's decode_loop, which the CUDA decode
// runs) on the CPU, with the CPU tanh-layer kernel, against the CPU decode op through the
// dispatcher: the same ids, state and logits, bit for bit, argmax and sampled. Where no GPU is
// available this checks the CUDA path's loop, draw and generator use.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <vector>

#include "decode.h"
#include "rnn_tanh.h"

int main() {
  const int64_t L = 2, B = 3, V = 11, E = 4, H = 9, steps = 40;
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor embedding = at::randn({V, E}, opt), head_w = at::randn({V, H}, opt) * 2,
                   head_b = at::randn({V}, opt), logits = at::randn({B, V}, opt),
                   h0 = at::randn({L, B, H}, opt).tanh();
  std::vector<at::Tensor> w_ih{at::randn({H, E}, opt), at::randn({H, H}, opt)},
      w_hh{at::randn({H, H}, opt), at::randn({H, H}, opt)};
  c10::List<std::optional<at::Tensor>> b_ih({at::randn({H}, opt), std::nullopt}),
      b_hh({at::randn({H}, opt), at::randn({H}, opt)});
  const charrnn::DecodeModel model{embedding, w_ih, w_hh, b_ih, b_hh, head_w, head_b};

  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("charrnn::rnn_tanh_decode", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                    at::TensorList, at::TensorList, const c10::List<std::optional<at::Tensor>>&,
                    const c10::List<std::optional<at::Tensor>>&, const at::Tensor&,
                    const std::optional<at::Tensor>&, int64_t, double, std::optional<int64_t>,
                    std::optional<at::Generator>)>();
  int failures = 0;
  for (const auto& [temperature, top_k] : {std::pair<double, std::optional<int64_t>>{0.0, std::nullopt},
                                           {1.0, std::nullopt}, {0.8, 3}}) {
    at::Generator g1 = at::make_generator<at::CPUGeneratorImpl>(7), g2 = at::make_generator<at::CPUGeneratorImpl>(7);
    const auto [ids, h_n, logits_n] = op.call(logits, h0, embedding, w_ih, w_hh, b_ih, b_hh, head_w,
                                              head_b, steps, temperature, top_k, g1);
    const auto [ids2, h_n2, logits_n2] = charrnn::decode_loop(
        logits, h0, model, steps, temperature, top_k, g2, &charrnn::rnn_tanh_forward_cpu);
    const bool ok = at::equal(ids, ids2) && at::equal(h_n, h_n2) && at::equal(logits_n, logits_n2);
    failures += !ok;
    std::printf("temperature %.1f top_k %lld: ids %s, h_n max diff %.3g, logits max diff %.3g: %s\n",
                temperature, static_cast<long long>(top_k.value_or(0)), at::equal(ids, ids2) ? "equal" : "differ",
                (h_n - h_n2).abs().max().item<double>(), (logits_n - logits_n2).abs().max().item<double>(),
                ok ? "ok" : "FAIL");
  }
  return failures == 0 ? 0 : 1;
}
