// The dropout mask of ../dropout_mask.h applied on the CPU. dropout_kernels.cpp is compiled once
// per CPU capability, as step_kernels.cpp is, and the variant in use is the step kernels'
// (step_kernels.h), so ATEN_CPU_CAPABILITY forces both alike.
#pragma once

#include <cstdint>

#include "../dropout_mask.h"
#include "step_kernels.h"

namespace at {
class Tensor;  // no ATen header here: dropout_kernels.cpp, built with wider instructions, needs none
}  // namespace at

namespace charrnn::cpu {

// y = dropout(x) over a row-major block of `rows` rows of `cols` elements, `ld` elements apart,
// whose element (r, c) is element first + r * ld + c of the layer's [T, B, H] output.
template <typename scalar_t>
using DropoutKernel = void (*)(scalar_t* y,        // [rows, cols] (row stride ld), written
                               const scalar_t* x,  // [rows, cols] (row stride ld); not y
                               int64_t rows, int64_t cols, int64_t ld, uint64_t first,
                               const DropoutMask& mask);

struct DropoutKernels {
  DropoutKernel<float> f32;
  DropoutKernel<double> f64;
};

template <typename scalar_t>
DropoutKernel<scalar_t> dropout_kernel();

// dropout(x) of a whole [T, B, H] tensor (any strides) into a new contiguous one, in parallel.
at::Tensor dropout_cpu(const at::Tensor& x, const DropoutMask& mask);

namespace DEFAULT { extern const DropoutKernels kDropoutKernels; }
#if CHARRNN_CPU_X86
namespace AVX2 { extern const DropoutKernels kDropoutKernels; }
namespace AVX512 { extern const DropoutKernels kDropoutKernels; }
#elif CHARRNN_CPU_SVE
namespace SVE256 { extern const DropoutKernels kDropoutKernels; }
#endif

}  // namespace charrnn::cpu
