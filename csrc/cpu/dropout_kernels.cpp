// The dropout kernel of dropout.h for one CPU capability; compiled as step_kernels.cpp is
// (see there). The loop is plain C++ over dropout_mask.h's functions: with the capability's
// flags the compiler vectorises it, the 64-bit multiplies included where AVX512DQ has them.
#include "dropout.h"

#ifndef CPU_CAPABILITY
#error "compile dropout_kernels.cpp with -DCPU_CAPABILITY=<DEFAULT|AVX2|AVX512|SVE256>"
#endif

namespace charrnn::cpu::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void dropout(scalar_t* __restrict y, const scalar_t* __restrict x, int64_t rows, int64_t cols,
             int64_t ld, uint64_t first, const DropoutMask& mask) {
  const DropoutMask m = mask;  // a local copy: the stores to y cannot alias it
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = r * ld;
    const uint64_t e0 = first + static_cast<uint64_t>(off);
    for (int64_t c = 0; c < cols; ++c) y[off + c] = dropout_apply(m, e0 + c, x[off + c]);
  }
}

}  // namespace

extern const DropoutKernels kDropoutKernels = {&dropout<float>, &dropout<double>};

}  // namespace charrnn::cpu::CPU_CAPABILITY
