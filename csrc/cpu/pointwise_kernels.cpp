// The pointwise kernels of pointwise.h for one CPU capability. The build compiles this file
// once per capability, defining CPU_CAPABILITY (DEFAULT, AVX2, AVX512, SVE256) and ATen's
// CPU_CAPABILITY_<name> for at::vec, with that capability's instruction-set flags; at::vec puts
// its code in the namespace at::vec::CPU_CAPABILITY and this file puts its own in
// charrnn::cpu::CPU_CAPABILITY, so the compilations share no inline function. Nothing here
// runs at load time: only the constant table at the end is defined at namespace scope.
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "pointwise.h"

#ifndef CPU_CAPABILITY
#error "compile pointwise_kernels.cpp with -DCPU_CAPABILITY=<DEFAULT|AVX2|AVX512|SVE256>"
#endif
#define CHARRNN_STRINGIFY_(x) #x
#define CHARRNN_STRINGIFY(x) CHARRNN_STRINGIFY_(x)

namespace charrnn::cpu::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void tanh(scalar_t* x, int64_t rows, int64_t cols, int64_t ld) {
  using Vec = at::vec::Vectorized<scalar_t>;
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* row = x + r * ld;
    for (int64_t i = 0; i < cols; i += Vec::size()) {
      const int64_t len = std::min<int64_t>(Vec::size(), cols - i);
      Vec::loadu(row + i, len).tanh().store(row + i, len);
    }
  }
}

template <typename scalar_t>
void tanh_grad(scalar_t* a, const scalar_t* extra, const scalar_t* h, int64_t rows, int64_t cols,
               int64_t ld) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const Vec one(scalar_t(1));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = r * ld;
    for (int64_t i = 0; i < cols; i += Vec::size()) {
      const int64_t len = std::min<int64_t>(Vec::size(), cols - i);
      Vec v = Vec::loadu(a + off + i, len);
      if (extra) v = v + Vec::loadu(extra + off + i, len);
      const Vec hv = Vec::loadu(h + off + i, len);
      (v * (one - hv * hv)).store(a + off + i, len);
    }
  }
}

}  // namespace

extern const CpuKernels kKernels = {CHARRNN_STRINGIFY(CPU_CAPABILITY),
                                    {&tanh<float>, &tanh_grad<float>},
                                    {&tanh<double>, &tanh_grad<double>}};

}  // namespace charrnn::cpu::CPU_CAPABILITY
