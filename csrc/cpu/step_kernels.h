// The CPU sweeps' step kernels: a step's product with w_hh, fused with its pointwise part, on a
// copy of w_hh packed once per call. step_kernels.cpp is compiled once per CPU capability
// (setup.py and CMakeLists.txt add that capability's instruction-set flags to it alone);
// dispatch.cpp picks the variant for the CPU at run time, as ATen's DispatchStub does.
//
// Why not BLAS: a step is a small [B, H] x [H, H] product, where a GEMM call's own work (its
// checks, its packing of both operands on every call, its thread decisions) costs as much as
// the multiply-adds at B = 1..32; packed once, w_hh streams from the core's cache at every step.
//
// Packed layout of a [K, N] matrix: ceil(N / panel) panels, each [K, panel] row-major (the
// last zero-padded), panel = one vector of the capability. The step kernels compute the
// columns of whole panels [p0, p1) of every row; all row-major buffers are `ld` elements apart.
#pragma once

#include <cstdint>

namespace charrnn::cpu {

template <typename scalar_t>
struct StepKernels {
  int64_t panel;  // columns per panel

  // packed = w, the [K, N] matrix whose element (k, j) is w[k * k_stride + j * j_stride]
  void (*pack)(const scalar_t* w, int64_t k_stride, int64_t j_stride, int64_t K, int64_t N,
               scalar_t* packed);  // [ceil(N / panel), K, panel]

  // out = bias + x w, the forward's input projection (w = w_ih^T)
  void (*project)(scalar_t* out,           // [rows, N] (row stride ld)
                  const scalar_t* x,       // [rows, K] (row stride K)
                  const scalar_t* bias,    // [N], or null
                  const scalar_t* packed,  // w [K, N], packed
                  int64_t rows, int64_t K, int64_t N, int64_t ld, int64_t p0, int64_t p1);

  // out = tanh(out + prev w), the forward's step (w = w_hh^T)
  void (*forward)(scalar_t* out,           // [rows, N] in: x_t w_ih^T + b; out: h_t
                  const scalar_t* prev,    // [rows, K] h_{t-1}
                  const scalar_t* packed,  // w [K, N], packed
                  int64_t rows, int64_t K, int64_t N, int64_t ld, int64_t p0, int64_t p1);

  // a = (a + extra + next w) * (1 - h^2), the backward's step (w = w_hh)
  void (*backward)(scalar_t* a,             // [rows, N] in: g_t; out: a_t
                   const scalar_t* extra,   // [rows, N] added too (grad_h_n), or null
                   const scalar_t* h,       // [rows, N] h_t
                   const scalar_t* next,    // [rows, K] a_{t+1}, or null: no product
                   const scalar_t* packed,  // w [K, N], packed
                   int64_t rows, int64_t K, int64_t N, int64_t ld, int64_t p0, int64_t p1);
};

struct CpuKernels {
  const char* capability;  // "default", "avx2", "avx512", "sve256": ATEN_CPU_CAPABILITY's names
  StepKernels<float> f32;
  StepKernels<double> f64;
};

// The variant for this CPU: the best one compiled that the CPU runs and that ATen's own choice
// allows (ATen's choice follows ATEN_CPU_CAPABILITY=default|avx2|avx512). Chosen once.
const CpuKernels& kernels();

template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels();

// One table per compiled capability, each defined by its compilation of step_kernels.cpp
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
