// Fused tanh (Elman) RNN over a whole truncated-BPTT window. Math: docs/design.md.
// Shapes: T steps, B batch rows, E input features, H hidden units; time-major.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace charrnn {

// Returns (output, h_n, dropped). With dropout p > 0, dropped is the output after dropout
// (dropout_mask.h's mask of (p, seed), applied as each step is computed), which the next layer
// takes; output stays undropped, for the recurrence and the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_forward_cpu(
    const at::Tensor& x,                    // [T, B, E]
    const at::Tensor& h0,                   // [B, H]
    const at::Tensor& w_ih,                 // [H, E]
    const at::Tensor& w_hh,                 // [H, H]
    const std::optional<at::Tensor>& b_ih,  // [H] or None
    const std::optional<at::Tensor>& b_hh,  // [H] or None
    double dropout,                         // p in [0, 1]
    int64_t seed);                          // the mask's seed (any value)
// output [T, B, H] (h_1..h_T), h_n [B, H] (a copy of h_T, not a view), dropped [T, B, H]
// (p > 0) or [0] (p = 0: output is the layer's output, and nothing is dropped or copied)

// A layer's weights as the CPU forward's kernels read them: what rnn_tanh_forward_cpu packs on
// every call, packed once by a caller that runs many windows with the same weights (the decode).
struct PackedLayer {
  at::Tensor w_ih, w_hh;           // w_ih^T [E, H] and w_hh^T [H, H] in the step kernels' panels
  std::optional<at::Tensor> bias;  // [H] b_ih + b_hh, or either alone, or None
};
PackedLayer pack_layer_cpu(const at::Tensor& w_ih,                   // [H, E]
                           const at::Tensor& w_hh,                   // [H, H]
                           const std::optional<at::Tensor>& b_ih,    // [H] or None
                           const std::optional<at::Tensor>& b_hh);   // [H] or None

// rnn_tanh_forward_cpu on checked arguments and a packed layer: the same kernels, so the same
// floats. Returns (output, dropped); h_n is output's last step, which the caller copies if it
// needs a tensor of its own (the decode does not).
std::tuple<at::Tensor, at::Tensor> rnn_tanh_output_packed_cpu(
    const at::Tensor& x,          // [T, B, E] contiguous
    const at::Tensor& h0,         // [B, H] contiguous
    const PackedLayer& layer,
    double dropout, int64_t seed);  // as rnn_tanh_forward_cpu's

// Generation's per-character products for the cells without a fused decode (gru, lstm,
// rnn-torch): a linear layer's weight packed once, then multiplied by a few rows at a time in
// the step kernels, without the re-layout, checks and thread start-up of a GEMM call. The
// packed layout is private to this build and process; its size is fixed by the shape alone,
// so that fake tensors know it.
constexpr int64_t kPackedLinearAlign = 16;  // N is padded to a multiple: >= every panel width
at::Tensor pack_linear_cpu(const at::Tensor& weight);  // [N, K]
// packed [K * round_up(N, kPackedLinearAlign)]
at::Tensor packed_linear_cpu(const at::Tensor& input,                 // [B, K]
                             const at::Tensor& packed,                // pack_linear(weight [N, K])
                             int64_t out_features,                    // N
                             const std::optional<at::Tensor>& bias);  // [N] or None
// [B, N] = input weight^T + bias, new and contiguous

// Returns (dx, dh0, dw_ih, dw_hh, db); db is the gradient of b_ih and of b_hh alike. Only the
// gradients whose output_mask entry is true are computed; the others are undefined tensors
// (None in Python), and the products that only they need are skipped. With dropout p > 0,
// grad_output is the gradient of the forward's `dropped`, and the mask of (p, seed) is drawn
// again, the one the forward drew, instead of being stored.
using GradMask = std::array<bool, 5>;  // dx, dh0, dw_ih, dw_hh, db
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_tanh_backward_cpu(
    const at::Tensor& grad_output,  // [T, B, H]  dL/dh_t through output (p > 0: through dropped)
    const at::Tensor& grad_h_n,     // [B, H]     dL/dh_T through h_n
    const at::Tensor& x,            // [T, B, E]  forward input
    const at::Tensor& h0,           // [B, H]     forward initial state
    const at::Tensor& w_ih,         // [H, E]
    const at::Tensor& w_hh,         // [H, H]
    const at::Tensor& output,       // [T, B, H]  forward output (undropped)
    GradMask output_mask,
    double dropout,                 // the forward's p
    int64_t seed);                  // the forward's seed
// dx [T, B, E], dh0 [B, H], dw_ih [H, E], dw_hh [H, H], db [H]

// A choice of the CPU kernels forced for the whole process, for benchmarks and tests that
// compare the ways a shape can run in one process (Python: charrnn_ext._C._force_cpu_choice and
// charrnn_ext.ops._forced_cpu_choice). knob "sweep": how a sweep splits a step among threads,
// "rows" (groups of batch rows) or "units" (blocks of hidden units); knob "backward": the
// backward's order, "overlap" (the window products alongside the sweep) or "serial" (sweep,
// then products); "auto" leaves it to the shapes again. The two splits compute the same floats
// at a thread count. Returns the knob's previous value (without a value: its current one, and
// changes nothing); an unknown knob or value throws c10::ValueError.
std::string force_cpu_choice(const std::string& knob,
                             const std::optional<std::string>& value = std::nullopt);

// The CPU kernels' vectorised code in use ("default", "avx2", "avx512", "sve256": the names of
// ATEN_CPU_CAPABILITY), and every variant compiled into this build, best first.
std::string cpu_capability();
std::vector<std::string> cpu_capabilities_compiled();

// x w_ih^T + b_ih + b_hh for all T steps as one GEMM, into a new [T, B, H] tensor that the
// kernels then turn into the output in place. Either bias may be absent. Any device.
at::Tensor input_projection(const at::Tensor& x,                     // [T, B, E] contiguous
                            const at::Tensor& w_ih,                  // [H, E]
                            const std::optional<at::Tensor>& b_ih,   // [H] or None
                            const std::optional<at::Tensor>& b_hh);  // [H] or None

// Argument validation shared by every device's kernels; throws c10::Error (a Python
// RuntimeError/ValueError) naming the argument, its shape and what was expected.
void check_forward_args(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh);
void check_dropout(double dropout);  // p in [0, 1]
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                         const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                         const at::Tensor& w_hh, const at::Tensor& output);

}  // namespace charrnn
