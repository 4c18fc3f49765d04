// The vectorised pointwise parts of the CPU sweeps. pointwise_kernels.cpp is compiled once per
// CPU capability (setup.py and CMakeLists.txt add that capability's instruction-set flags to it
// alone); dispatch.cpp picks the variant for the CPU at run time, as ATen's DispatchStub does.
// Every buffer is row-major: `rows` rows of `cols` elements, `ld` elements apart.
#pragma once

#include <cstdint>

namespace charrnn::cpu {

template <typename scalar_t>
struct PointwiseKernels {
  // x = tanh(x)
  void (*tanh)(scalar_t* x,  // [rows, cols] (row stride ld), in place
               int64_t rows, int64_t cols, int64_t ld);
  // a = (a + extra) * (1 - h^2)
  void (*tanh_grad)(scalar_t* a,             // [rows, cols] in: g_t + a_{t+1} w_hh; out: a_t
                    const scalar_t* extra,   // [rows, cols] added first (grad_h_n), or null
                    const scalar_t* h,       // [rows, cols] h_t
                    int64_t rows, int64_t cols, int64_t ld);
};

struct CpuKernels {
  const char* capability;  // "default", "avx2", "avx512", "sve256": ATEN_CPU_CAPABILITY's names
  PointwiseKernels<float> f32;
  PointwiseKernels<double> f64;
};

// The variant for this CPU: the best one compiled that the CPU runs and that ATen's own choice
// allows (ATen's choice follows ATEN_CPU_CAPABILITY=default|avx2|avx512). Chosen once.
const CpuKernels& kernels();

template <typename scalar_t>
const PointwiseKernels<scalar_t>& pointwise();

// One table per compiled capability, each defined by its compilation of pointwise_kernels.cpp
// (constant-initialised data: no code of a wider instruction set runs at load time). The
// capabilities per architecture match the build's lists in setup.py and CMakeLists.txt.
namespace DEFAULT { extern const CpuKernels kKernels; }
#if defined(__x86_64__) || defined(_M_X64)
#define CHARRNN_CPU_X86 1
namespace AVX2 { extern const CpuKernels kKernels; }
namespace AVX512 { extern const CpuKernels kKernels; }
#elif defined(__aarch64__) && defined(__linux__)
#define CHARRNN_CPU_SVE 1
namespace SVE256 { extern const CpuKernels kKernels; }
#endif

}  // namespace charrnn::cpu
