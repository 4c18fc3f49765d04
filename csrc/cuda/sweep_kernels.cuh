// The persistent sweep kernel (the recurrence in sweep.h) and what it needs, device code only.
// sweep.cu includes it for nvcc; tests/cpp/test_sweep_emulated.cpp includes it for g++ against
// an emulation of the few CUDA primitives it uses, with each CUDA thread a host thread, which
// checks indexing and barrier placement where no GPU is available.
#pragma once

#include <cooperative_groups.h>
#include <cuda/atomic>
#include <cuda_runtime.h>

#include "sweep.h"

// Thread-block clusters and distributed shared memory exist from sm_90 on. The host pass
// compiles every branch; a device pass for an older architecture compiles the cluster kernels
// to a trap, and the planner never picks them there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define CHARRNN_HAS_CLUSTERS 1
#endif

namespace charrnn::cuda {

#ifndef CHARRNN_EMULATED_CUDA  // the emulation supplies each block's buffer itself
__device__ inline unsigned char* block_shared_memory() {
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  return dynamic_shared;
}
#endif

namespace cg = cooperative_groups;

enum class Scope { kBlock, kCluster, kGrid };

// A block has units * groups threads, at most kMaxThreads: a slice of more units would need
// more than 1 MB of shared memory anyway, and the bound leaves 128 registers a thread.
constexpr int kMaxThreads = 512;

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ inline int round_up(int a, int b) { return ceil_div(a, b) * b; }

// The block's shared memory, all in elements. h is padded to a multiple of 4 (16-byte loads
// of 4 k at a time) plus 4, so rows read by one warp start in different banks. The weights
// keep one spare k-row after each group's kc rows: when a warp spans several groups (fewer
// than 32 units), their reads kc * units apart would otherwise hit the same bank.
struct Layout {
  int hpad, ldh, kc;  // k padded; row stride of the state; k per group (a multiple of 4)
  int state, weights, partials;  // sizes of the three regions
  __host__ __device__ Layout(int H, int units, int rows, int groups, int buffers) {
    hpad = round_up(H, 4);
    ldh = hpad + 4;
    kc = round_up(ceil_div(hpad, groups), 4);
    state = buffers * rows * ldh;
    weights = (hpad + groups) * units;
    partials = groups * rows * units;
  }
  __host__ __device__ int total() const { return state + weights + partials; }
};

__host__ __device__ constexpr int state_buffers(Scope scope) {
  // Remote blocks of a cluster may still read step t-1's state while step t is written into
  // it, so clusters double-buffer; a block or a grid tile has a barrier between the two.
  return scope == Scope::kCluster ? 2 : 1;
}

__device__ inline void load4(const float* p, float v[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
__device__ inline void load4(const double* p, double v[4]) {
  const double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}

// Copies rows x H elements, contiguous at src, into rows of stride ld at dst, reading through
// L2 (__ldcg): other blocks wrote them, and this SM's L1 may hold stale lines. Each load waits
// out an L2 round trip, so every thread keeps kInFlight loads of V (one element, or 16 bytes of
// them) in flight before it stores any.
template <typename V, typename scalar_t>
__device__ void copy_rows_through_l2(scalar_t* dst, int ld, const scalar_t* src, int rows, int H) {
  constexpr int kWidth = sizeof(V) / sizeof(scalar_t), kInFlight = 8;
  const int per_row = H / kWidth, n = rows * per_row;
  const V* from = reinterpret_cast<const V*>(src);
  for (int e0 = threadIdx.x; e0 < n; e0 += kInFlight * blockDim.x) {
    V v[kInFlight];
#pragma unroll
    for (int j = 0; j < kInFlight; ++j)
      if (const int e = e0 + j * blockDim.x; e < n) v[j] = __ldcg(from + e);
#pragma unroll
    for (int j = 0; j < kInFlight; ++j)
      if (const int e = e0 + j * blockDim.x; e < n)
        *reinterpret_cast<V*>(dst + (e / per_row) * ld + (e % per_row) * kWidth) = v[j];
  }
}

template <typename scalar_t> struct Vec16;  // 16 bytes of scalar_t: one thread's widest load
template <> struct Vec16<float> { using type = float4; };
template <> struct Vec16<double> { using type = double2; };

// Grid scope: every block of the batch tile arrives once per step; waiting for
// (step + 1) * slices arrivals is a barrier across the tile's blocks only.
// 64-bit, so that T * slices arrivals never wrap.
__device__ inline void tile_barrier(unsigned long long* counter, unsigned long long target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    ::cuda::atomic_ref<unsigned long long, ::cuda::thread_scope_device> arrivals(*counter);
    arrivals.fetch_add(1, ::cuda::memory_order_release);
    while (arrivals.load(::cuda::memory_order_acquire) < target) __nanosleep(32);
  }
  __syncthreads();
}

// Block (blockIdx.x, blockIdx.y) owns hidden units [u0, u0 + units) of batch rows
// [b0, b0 + rows). Per step: partial dot products over its k range into shared memory, a
// block barrier, the pointwise part for its (row, unit) pairs, and the scope's barrier.
template <typename scalar_t, bool kBackward, Scope kScope, int kRows>
__global__ void __launch_bounds__(kMaxThreads)
    sweep_kernel(const SweepArgs<scalar_t> a, const int units, const int rows, const int groups) {
  constexpr int kBuffers = state_buffers(kScope);
  const Layout lay(a.H, units, rows, groups, kBuffers);
  scalar_t* state = reinterpret_cast<scalar_t*>(block_shared_memory());  // [kBuffers][rows][ldh]
  scalar_t* weights = state + lay.state;  // [hpad + groups][units]: M[u0 + u][k] at k + k / kc
  scalar_t* partials = weights + lay.weights;  // [groups][rows][units]

  const int tid = threadIdx.x, nthreads = blockDim.x, H = a.H;
  const int u0 = blockIdx.x * units, b0 = blockIdx.y * rows;
  const int my_units = min(units, H - u0), my_rows = min(rows, a.B - b0);

  // The initial state (zero padding included) and this block's slice of M. The forward
  // reads w_hh's rows, the backward its columns; either way along contiguous memory.
  for (int i = tid; i < lay.state; i += nthreads) {
    const int r = (i / lay.ldh) % rows, k = i % lay.ldh;
    state[i] = a.init && i < rows * lay.ldh && r < my_rows && k < H
                   ? a.init[static_cast<int64_t>(b0 + r) * H + k] : scalar_t(0);
  }
  for (int i = tid; i < lay.hpad * units; i += nthreads) {
    const int u = kBackward ? i % units : i / lay.hpad, k = kBackward ? i / units : i % lay.hpad;
    const bool inside = u < my_units && k < H;
    weights[(k + k / lay.kc) * units + u] = !inside    ? scalar_t(0)
                                            : kBackward ? a.w_hh[static_cast<int64_t>(k) * H + u0 + u]
                                                        : a.w_hh[static_cast<int64_t>(u0 + u) * H + k];
  }
  if constexpr (kScope == Scope::kCluster) {
#ifdef CHARRNN_HAS_CLUSTERS
    cg::this_cluster().sync();  // every block of the cluster has started before remote writes
#else
    __trap();
#endif
  } else {
    __syncthreads();
  }

  const int u = tid % units, group = tid / units;
  const int k0 = group * lay.kc, k1 = min(lay.hpad, k0 + lay.kc);
  const scalar_t* w_col = weights + group * units + u;  // past the spare rows of groups before
  // This thread's first (row, unit) of the pointwise part; its inputs from global memory are
  // loaded before the dot products so that their latency hides behind them.
  const bool first_inside = tid < my_rows * units && tid % units < my_units;
  const int64_t first_offset = static_cast<int64_t>(b0 + tid / units) * H + u0 + tid % units;
  // The grid scope reloads each step's state with 16-byte loads where H and seq allow them.
  using Wide = typename Vec16<scalar_t>::type;
  const bool wide_reload = H % (sizeof(Wide) / sizeof(scalar_t)) == 0 &&
                           reinterpret_cast<uintptr_t>(a.seq) % sizeof(Wide) == 0;
  int buffer = 0;
  for (int64_t i = 0; i < a.T; ++i) {
    const int64_t t = kBackward ? a.T - 1 - i : i;
    const scalar_t* prev = state + buffer * rows * lay.ldh;
    scalar_t first_seq = scalar_t(0), first_h = scalar_t(0);
    if (first_inside) {
      first_seq = a.seq[t * a.B * H + first_offset];
      if constexpr (kBackward) first_h = a.hidden[t * a.B * H + first_offset];
    }

    // Partial sums of (M s_prev)[row, u0 + u] over k in [k0, k1), kRows rows at a time.
    for (int r0 = 0; r0 < rows; r0 += kRows) {
      scalar_t acc[kRows];
      const scalar_t* s_row[kRows];
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        acc[j] = scalar_t(0);
        s_row[j] = prev + min(r0 + j, rows - 1) * lay.ldh;  // past the tile: read, not stored
      }
#pragma unroll 2
      for (int k = k0; k < k1; k += 4) {
        scalar_t w[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) w[q] = w_col[(k + q) * units];
#pragma unroll
        for (int j = 0; j < kRows; ++j) {
          scalar_t s[4];
          load4(s_row[j] + k, s);
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[j] = fma(w[q], s[q], acc[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < kRows; ++j)
        if (r0 + j < rows) partials[(group * rows + r0 + j) * units + u] = acc[j];
    }
    __syncthreads();

    scalar_t* next = state + (buffer ^ (kBuffers - 1)) * rows * lay.ldh;
    for (int o = tid; o < my_rows * units; o += nthreads) {
      const int r = o / units, v = o % units;
      if (v >= my_units) continue;
      scalar_t sum = scalar_t(0);
      for (int g = 0; g < groups; ++g) sum += partials[(g * rows + r) * units + v];
      const int64_t idx = (t * a.B + b0 + r) * H + u0 + v;
      scalar_t s = (o == tid ? first_seq : a.seq[idx]) + sum;
      if constexpr (kBackward) {
        const scalar_t h = o == tid ? first_h : a.hidden[idx];
        s *= scalar_t(1) - h * h;
      } else {
        s = tanh(s);
      }
      a.seq[idx] = s;
      if constexpr (!kBackward)
        if (a.dropped) a.dropped[idx] = dropout_apply(a.mask, static_cast<uint64_t>(idx), s);
      const int at = r * lay.ldh + u0 + v;
      if constexpr (kScope == Scope::kBlock) {
        next[at] = s;
      } else if constexpr (kScope == Scope::kCluster) {
#ifdef CHARRNN_HAS_CLUSTERS
        cg::cluster_group cluster = cg::this_cluster();
        for (unsigned c = 0; c < cluster.num_blocks(); ++c) cluster.map_shared_rank(next, c)[at] = s;
#endif
      }
    }

    if constexpr (kScope == Scope::kBlock) {
      __syncthreads();
    } else if constexpr (kScope == Scope::kCluster) {
#ifdef CHARRNN_HAS_CLUSTERS
      cg::this_cluster().sync();  // release/acquire: the remote writes of step t are visible
#endif
      buffer ^= 1;
    } else {
      if (i + 1 == a.T) break;  // the kernel's end orders the last step's writes
      tile_barrier(a.arrivals + blockIdx.y, static_cast<unsigned long long>(i + 1) * gridDim.x);
      // The tile's rows of s_t, which the other blocks wrote, are contiguous in seq.
      const scalar_t* s_t = a.seq + (t * a.B + b0) * H;
      if (wide_reload)
        copy_rows_through_l2<Wide>(state, lay.ldh, s_t, my_rows, H);
      else
        copy_rows_through_l2<scalar_t>(state, lay.ldh, s_t, my_rows, H);
      __syncthreads();
    }
  }
}

template <typename scalar_t>
using Kernel = void (*)(const SweepArgs<scalar_t>, int, int, int);

template <typename scalar_t, bool kBackward, Scope kScope>
Kernel<scalar_t> pick_rows(int rows) {
  // Rows per pass over the weights: as many independent FMA chains per thread as the tile has
  // rows, up to four (a tile of 3 rows computes one wasted row).
  return rows == 1   ? sweep_kernel<scalar_t, kBackward, kScope, 1>
         : rows == 2 ? sweep_kernel<scalar_t, kBackward, kScope, 2>
                     : sweep_kernel<scalar_t, kBackward, kScope, 4>;
}

template <typename scalar_t, bool kBackward>
Kernel<scalar_t> pick_scope(Scope scope, int rows) {
  switch (scope) {
    case Scope::kBlock: return pick_rows<scalar_t, kBackward, Scope::kBlock>(rows);
    case Scope::kCluster: return pick_rows<scalar_t, kBackward, Scope::kCluster>(rows);
    default: return pick_rows<scalar_t, kBackward, Scope::kGrid>(rows);
  }
}

template <typename scalar_t>
Kernel<scalar_t> pick_kernel(bool backward, Scope scope, int rows) {
  return backward ? pick_scope<scalar_t, true>(scope, rows) : pick_scope<scalar_t, false>(scope, rows);
}

}  // namespace charrnn::cuda
