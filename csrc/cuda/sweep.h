// The sequential part of the fused tanh RNN on the GPU: the forward and backward sweeps over
// T steps. rnn_tanh_cuda.cpp does the window-sized products through ATen (cuBLAS) and calls
// these; sweep.cu holds the kernels, so nvcc never compiles ATen's operator headers.
//
// One recurrence covers both directions. With s_t the state of step t and M the recurrent
// matrix seen by the step,
//   forward  (t = 0 .. T-1):  s_t = tanh(seq_t + M s_{t-1}),             M = w_hh,   s_{-1} = h0
//   backward (t = T-1 .. 0):  s_t = (seq_t + M s_{t+1}) * (1 - h_t^2),  M = w_hh^T, s_T = 0
// where seq_t holds the input projection (forward) or the output gradient with grad_h_n
// already added at T-1 (backward), and s_t overwrites seq_t in place. The forward may also
// write dropout(s_t) (../dropout_mask.h) as it goes, for the next layer.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../dropout_mask.h"

namespace charrnn::cuda {

// How a sweep synchronises its T steps. CHARRNN_CUDA_SWEEP=auto|block|cluster|grid|steps
// forces one (tests run every path this way); auto takes the first that fits of grid, cluster,
// block (fastest first where they fit: bench/bench_kernels.py --device cuda compares them),
// else steps.
enum class SweepPath {
  kAuto,
  kBlock,    // one thread block per batch tile holds all of w_hh in shared memory; __syncthreads
  kCluster,  // sm_90: a cluster per batch tile, each block a slice of w_hh's rows; h_t is
             // broadcast through distributed shared memory; one cluster barrier per step
  kGrid,     // blocks of a batch tile, each a slice of w_hh, all co-resident (cooperative
             // launch); h_t goes through L2 and a per-tile arrival counter orders the steps
  kSteps,    // fallback: one cuBLAS GEMM and one pointwise kernel per step
};

SweepPath sweep_path_from_env();  // reads CHARRNN_CUDA_SWEEP; throws on an unknown value
SweepPath sweep_path_from_name(const char* name);  // "auto", "block", ...; throws if unknown
const char* sweep_path_name(SweepPath path);

// The launch shape of a persistent sweep. Every batch tile of `rows` rows is owned by
// `slices` blocks, each holding `units` hidden units' rows of M in shared memory; each block
// has units * groups threads, the groups splitting the dot products along k.
struct SweepPlan {
  SweepPath path = SweepPath::kSteps;
  int units = 0, slices = 0, rows = 0, tiles = 0, groups = 0, threads = 0;
  size_t smem_bytes = 0;
};

// The plan for a path on the current device, or one with path == kSteps when a persistent
// path does not fit (kAuto: the first that fits). For a forced path that cannot run, the
// plan's path is kSteps and *why_not says why.
SweepPlan plan_sweep(SweepPath requested, int64_t B, int64_t H, size_t elem_size,
                     const char** why_not);

template <typename scalar_t>
struct SweepArgs {
  scalar_t* seq;           // [T, B, H] in: projection (fwd) or gradient (bwd); out: s_t
  const scalar_t* hidden;  // [T, B, H] forward output h_t (backward only; else null)
  const scalar_t* init;    // [B, H] h0 (forward), or null: the state starts at zero
  const scalar_t* w_hh;    // [H, H]
  unsigned long long* arrivals;  // [tiles] zeroed counters (grid path only; else null)
  int64_t T;
  int B, H;
  scalar_t* dropped = nullptr;  // [T, B, H] forward only: dropout(s_t) with `mask`; or null
  DropoutMask mask = {};
};

// Launches the persistent sweep of `plan` on `stream`; plan.path must not be kSteps.
template <typename scalar_t>
void launch_sweep(const SweepPlan& plan, bool backward, const SweepArgs<scalar_t>& args,
                  cudaStream_t stream);

// y = dropout(x) elementwise, element i of x being element i of the layer's output.
template <typename scalar_t>
void launch_dropout(scalar_t* y,        // [n] written
                    const scalar_t* x,  // [n]
                    int64_t n, const DropoutMask& mask, cudaStream_t stream);

// a *= 1 - h^2 elementwise (the backward's per-step pointwise part on the kSteps path).
template <typename scalar_t>
void launch_tanh_grad(scalar_t* a,        // [n] in: g_t + a_{t+1} w_hh; out: a_t
                      const scalar_t* h,  // [n] h_t
                      int64_t n, cudaStream_t stream);

}  // namespace charrnn::cuda
