// CUDA kernels of the fused tanh RNN: the window-sized products through ATen (cuBLAS on the
// current stream), the two sweeps through sweep.cu's persistent kernels, or, when those do not
// fit, one cuBLAS GEMM and one pointwise kernel per step, still inside one op call.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../rnn_tanh.h"
#include "sweep.h"

namespace charrnn {
namespace {

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), "charrnn: x must be a CUDA tensor for the CUDA kernels, got ",
                    x.device());
}

cuda::SweepPlan plan_for(int64_t B, int64_t H, const at::Tensor& like) {
  const cuda::SweepPath requested = cuda::sweep_path_from_env();
  const char* why_not = nullptr;
  cuda::SweepPlan plan = cuda::plan_sweep(requested, B, H, like.element_size(), &why_not);
  TORCH_CHECK(requested == cuda::SweepPath::kAuto || requested == plan.path,
              "charrnn: CHARRNN_CUDA_SWEEP=", cuda::sweep_path_name(requested),
              " cannot run at B=", B, ", H=", H, ", dtype ", like.scalar_type(), ": ",
              why_not ? why_not : "unknown reason");
  return plan;
}

// y = dropout(x) over a whole layer's output; both contiguous [T, B, H].
void dropout_into(at::Tensor& y, const at::Tensor& x, const DropoutMask& mask) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "charrnn_dropout", [&] {
    cuda::launch_dropout(y.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), x.numel(), mask,
                         c10::cuda::getCurrentCUDAStream());
  });
}

// Runs the recurrence of sweep.h over seq [T, B, H] in place; a forward with a non-empty
// `dropped` [T, B, H] also writes dropout(s_t) there.
void sweep(bool backward, at::Tensor& seq, const at::Tensor& hidden, const at::Tensor& init,
           const at::Tensor& w_hh, at::Tensor dropped = {}, const DropoutMask& mask = {}) {
  const bool drop = dropped.defined() && dropped.numel() > 0;
  const int64_t T = seq.size(0), B = seq.size(1), H = seq.size(2);
  const cuda::SweepPlan plan = plan_for(B, H, seq);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (plan.path == cuda::SweepPath::kSteps) {
    if (!backward) {
      for (int64_t t = 0; t < T; ++t) {
        at::Tensor h_t = seq[t];
        h_t.addmm_(t == 0 ? init : seq[t - 1], w_hh.t()).tanh_();
      }
      if (drop) dropout_into(dropped, seq, mask);
    } else {
      AT_DISPATCH_FLOATING_TYPES(seq.scalar_type(), "charrnn_tanh_grad", [&] {
        const scalar_t* h = hidden.const_data_ptr<scalar_t>();
        for (int64_t t = T - 1; t >= 0; --t) {
          at::Tensor a_t = seq[t];
          if (t + 1 < T) a_t.addmm_(seq[t + 1], w_hh);
          cuda::launch_tanh_grad(a_t.data_ptr<scalar_t>(), h + t * B * H, B * H, stream);
        }
      });
    }
    return;
  }
  at::Tensor arrivals;
  if (plan.path == cuda::SweepPath::kGrid)
    arrivals = at::zeros({plan.tiles}, seq.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(seq.scalar_type(), "charrnn_sweep", [&] {
    const cuda::SweepArgs<scalar_t> args{
        seq.data_ptr<scalar_t>(),
        backward ? hidden.const_data_ptr<scalar_t>() : nullptr,
        backward ? nullptr : init.const_data_ptr<scalar_t>(),
        w_hh.const_data_ptr<scalar_t>(),
        arrivals.defined() ? reinterpret_cast<unsigned long long*>(arrivals.data_ptr<int64_t>())
                            : nullptr,
        T, static_cast<int>(B), static_cast<int>(H),
        drop ? dropped.data_ptr<scalar_t>() : nullptr, mask};
    cuda::launch_sweep(plan, backward, args, stream);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_forward_cuda(
    const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& w_ih_in,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, double dropout, int64_t seed) {
  check_forward_args(x_in, h0_in, w_ih_in, w_hh_in, b_ih, b_hh);
  check_dropout(dropout);
  check_cuda(x_in);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(),
                   w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t T = x.size(0);

  // The sweep turns the input projection into h_1..h_T in place, and writes their dropout.
  at::Tensor output = input_projection(x, w_ih, b_ih, b_hh);
  at::Tensor dropped = dropout > 0 ? at::empty_like(output) : at::empty({0}, output.options());
  sweep(/*backward=*/false, output, at::Tensor(), h0, w_hh, dropped, make_dropout_mask(dropout, seed));
  return {output, output[T - 1].clone(), dropped};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_tanh_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n_in, const at::Tensor& x_in,
    const at::Tensor& h0_in, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
    const at::Tensor& output_in, GradMask output_mask, double dropout, int64_t seed) {
  check_backward_args(grad_output, grad_h_n_in, x_in, h0_in, w_ih_in, w_hh_in, output_in);
  check_dropout(dropout);
  check_cuda(x_in);
  const auto [want_dx, want_dh0, want_dw_ih, want_dw_hh, want_db] = output_mask;
  if (!(want_dx || want_dh0 || want_dw_ih || want_dw_hh || want_db)) return {};
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(),
                   w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous(),
                   output = output_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), E = x.size(2), H = w_hh.size(0);

  // a_t = (g_t + a_{t+1} w_hh) * (1 - h_t^2), built in place over a copy of grad_output with
  // grad_h_n folded into the last step. With dropout, g_t is the gradient of the dropped output
  // through the forward's mask, drawn again.
  at::Tensor a;
  if (dropout > 0) {
    a = at::empty({T, B, H}, x.options());
    dropout_into(a, grad_output.contiguous(), make_dropout_mask(dropout, seed));
  } else {
    a = grad_output.clone(at::MemoryFormat::Contiguous);
  }
  a[T - 1].add_(grad_h_n_in);
  sweep(/*backward=*/true, a, output, at::Tensor(), w_hh);

  // Every wanted product that needs the finished a_t is one GEMM over the whole window.
  const at::Tensor a2d = a.view({T * B, H});
  at::Tensor dx, dh0, dw_ih, dw_hh, db;
  if (want_dx) dx = at::mm(a2d, w_ih).view({T, B, E});
  if (want_dw_ih) dw_ih = at::mm(a2d.t(), x.view({T * B, E}));
  if (want_dw_hh) {  // sum_t a_t^T h_{t-1}, with h_{-1} = h0
    dw_hh = at::mm(a[0].t(), h0);
    if (T > 1) dw_hh.addmm_(a.narrow(0, 1, T - 1).reshape({(T - 1) * B, H}).t(),
                            output.narrow(0, 0, T - 1).reshape({(T - 1) * B, H}));
  }
  if (want_db) db = a2d.sum(0);
  if (want_dh0) dh0 = at::mm(a[0], w_hh);
  return {dx, dh0, dw_ih, dw_hh, db};
}

TORCH_LIBRARY_IMPL(charrnn, CUDA, m) {
  m.impl("rnn_tanh_forward", &rnn_tanh_forward_cuda);
  m.impl("rnn_tanh_backward", &rnn_tanh_backward_cuda);
}

}  // namespace charrnn
