// The variant of the dropout kernel in use, and dropout over a whole tensor (the backward's
// first pass over grad_output).
#include "dropout.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <string>

namespace charrnn::cpu {
namespace {

// The variant of the capability the step kernels use (dispatch.cpp chose it).
const DropoutKernels& chosen() {
  static const DropoutKernels& k = []() -> const DropoutKernels& {
    const std::string name = kernels().capability;
#if CHARRNN_CPU_X86
    if (name == "AVX512") return AVX512::kDropoutKernels;
    if (name == "AVX2") return AVX2::kDropoutKernels;
#elif CHARRNN_CPU_SVE
    if (name == "SVE256") return SVE256::kDropoutKernels;
#endif
    return DEFAULT::kDropoutKernels;
  }();
  return k;
}

// Elements per task: a smaller share is not worth waking a thread for (bench/bench_dropout.py
// times the op).
constexpr int64_t kGrain = 1 << 15;

}  // namespace

template <>
DropoutKernel<float> dropout_kernel<float>() {
  return chosen().f32;
}
template <>
DropoutKernel<double> dropout_kernel<double>() {
  return chosen().f64;
}

at::Tensor dropout_cpu(const at::Tensor& x_in, const DropoutMask& mask) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "charrnn_dropout_cpu", [&] {
    const DropoutKernel<scalar_t> kernel = dropout_kernel<scalar_t>();
    const scalar_t* from = x.const_data_ptr<scalar_t>();
    scalar_t* to = y.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t i0, int64_t i1) {
      kernel(to + i0, from + i0, 1, i1 - i0, 0, static_cast<uint64_t>(i0), mask);
    });
  });
  return y;
}

}  // namespace charrnn::cpu
