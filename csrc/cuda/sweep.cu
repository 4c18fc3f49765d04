// Persistent sweep kernels (the recurrence in sweep.h), their launch plans, and the pointwise
// kernel of the per-step fallback. Only the CUDA runtime and c10's error macros are included.
#include <cooperative_groups.h>
#include <cuda/atomic>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "sweep.h"

// Thread-block clusters and distributed shared memory exist from sm_90 on. The host pass
// compiles every branch; a device pass for an older architecture compiles the cluster kernels
// to a trap, and the planner never picks them there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define CHARRNN_HAS_CLUSTERS 1
#endif

namespace charrnn::cuda {
namespace {

namespace cg = cooperative_groups;

enum class Scope { kBlock, kCluster, kGrid };

// A block has units * groups threads, at most kMaxThreads: a slice of more units would need
// more than 1 MB of shared memory anyway, and the bound leaves 128 registers a thread.
constexpr int kMaxThreads = 512;
constexpr int kMinSliceK = 32;   // each k-split group takes at least this many k
constexpr int kMaxCluster = 16;  // sm_90's non-portable cluster size limit

__host__ __device__ inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ inline int round_up(int a, int b) { return ceil_div(a, b) * b; }

// The block's shared memory, all in elements. h is padded to a multiple of 4 (16-byte loads
// of 4 k at a time) plus 4, so rows read by one warp start in different banks.
struct Layout {
  int hpad, ldh, kc;  // k padded; row stride of the state; k per group (a multiple of 4)
  int state, weights, partials;  // sizes of the three regions
  __host__ __device__ Layout(int H, int units, int rows, int groups, int buffers) {
    hpad = round_up(H, 4);
    ldh = hpad + 4;
    kc = round_up(ceil_div(hpad, groups), 4);
    state = buffers * rows * ldh;
    weights = hpad * units;
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
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  scalar_t* state = reinterpret_cast<scalar_t*>(smem_bytes);  // [kBuffers][rows][ldh]
  scalar_t* weights = state + lay.state;                      // [hpad][units]: M[u0 + u][k]
  scalar_t* partials = weights + lay.weights;                 // [groups][rows][units]

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
  for (int i = tid; i < lay.weights; i += nthreads) {
    const int u = kBackward ? i % units : i / lay.hpad, k = kBackward ? i / units : i % lay.hpad;
    const bool inside = u < my_units && k < H;
    weights[k * units + u] = !inside ? scalar_t(0)
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
  const scalar_t* w_col = weights + u;
  // This thread's first (row, unit) of the pointwise part; its inputs from global memory are
  // loaded before the dot products so that their latency hides behind them.
  const bool first_inside = tid < my_rows * units && tid % units < my_units;
  const int64_t first_offset = static_cast<int64_t>(b0 + tid / units) * H + u0 + tid % units;
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
      // Other blocks wrote s_t to global memory; read it through L2 (__ldcg), since this
      // SM's L1 may hold stale lines of seq from earlier reads.
      for (int r = 0; r < my_rows; ++r)
        for (int k = tid; k < H; k += nthreads)
          state[r * lay.ldh + k] = __ldcg(a.seq + (t * a.B + b0 + r) * H + k);
      __syncthreads();
    }
  }
}

template <typename scalar_t>
__global__ void tanh_grad_kernel(scalar_t* a, const scalar_t* h, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    a[i] *= scalar_t(1) - h[i] * h[i];
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

Scope scope_of(SweepPath path) {
  return path == SweepPath::kBlock ? Scope::kBlock
         : path == SweepPath::kCluster ? Scope::kCluster : Scope::kGrid;
}

struct Device {
  int sms = 0, smem_optin = 0, major = 0, cooperative = 0, clusters = 0;
  explicit Device(int dev) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, dev));
    if (major >= 9) C10_CUDA_CHECK(cudaDeviceGetAttribute(&clusters, cudaDevAttrClusterLaunch, dev));
  }
};

// A persistent sweep whose tiles do not all fit on the GPU at once runs them in waves, each
// a whole sweep; past this many the per-step path is the better choice.
constexpr int64_t kMaxWaves = 2;

// Fills groups, threads and smem_bytes from the other fields; false if the block is too big.
bool finish_plan(SweepPlan& p, int H, size_t elem, const Device& dev) {
  if (p.units > kMaxThreads || static_cast<int64_t>(p.slices) * p.tiles > 65535) return false;
  p.groups = std::max(1, std::min(kMaxThreads / p.units, round_up(H, 4) / kMinSliceK));
  p.threads = p.units * p.groups;
  // In 64 bits first: Layout's ints would overflow for a huge tile.
  const int64_t hpad = round_up(H, 4), rows = p.rows, units = p.units;
  const int64_t elems = state_buffers(scope_of(p.path)) * rows * (hpad + 4) + hpad * units +
                        static_cast<int64_t>(p.groups) * rows * units;
  if (elems * static_cast<int64_t>(elem) > dev.smem_optin) return false;
  p.smem_bytes = static_cast<size_t>(Layout(H, p.units, p.rows, p.groups,
                                            state_buffers(scope_of(p.path))).total()) * elem;
  return true;
}

// Batch tiles: as many as there are multiprocessors for `blocks_per_tile` blocks each, then
// fewer rows per tile (more tiles) until shared memory fits.
bool plan_tiles(SweepPlan& p, int B, int H, size_t elem, const Device& dev, int blocks_per_tile) {
  const int tiles = std::max(1, std::min(B, dev.sms / blocks_per_tile));
  for (p.rows = ceil_div(B, tiles);; p.rows = ceil_div(p.rows, 2)) {
    p.tiles = ceil_div(B, p.rows);
    if (finish_plan(p, H, elem, dev)) return true;
    if (p.rows == 1) return false;
  }
}

template <typename scalar_t>
Kernel<scalar_t> kernel_for(const SweepPlan& p, bool backward) {
  return pick_kernel<scalar_t>(backward, scope_of(p.path), p.rows);
}

// The dynamic shared-memory limit is a property of the kernel, not of a launch: set to the
// device's maximum for every kernel, so that concurrent callers never lower it under another.
void allow_smem(const void* kernel, const Device& dev) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      dev.smem_optin));
}

cudaLaunchAttribute cluster_attribute(int size) {
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = size;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  return attr;
}

// Co-resident units of the plan (blocks, or clusters for the cluster path); 0 if none fits.
template <typename scalar_t>
int64_t resident(const SweepPlan& p, const Device& dev) {
  int64_t fewest = INT64_MAX;
  for (bool backward : {false, true}) {
    const void* kernel = reinterpret_cast<const void*>(kernel_for<scalar_t>(p, backward));
    allow_smem(kernel, dev);
    if (p.path == SweepPath::kCluster) {
      cudaFuncAttributes attrs;
      C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
      // Compiled for an older GPU (machine code, or PTX the driver compiles at load time, which
      // reports binaryVersion 90 but ptxVersion 80): its cluster code is a trap.
      if (attrs.binaryVersion < 90 || attrs.ptxVersion < 90) return 0;
      if (p.slices > 8)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(p.slices, p.tiles);
      config.blockDim = dim3(p.threads);
      config.dynamicSmemBytes = p.smem_bytes;
      cudaLaunchAttribute attr = cluster_attribute(p.slices);
      config.attrs = &attr;
      config.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
        (void)cudaGetLastError();  // an unsupported cluster shape is an answer, not an error
        return 0;
      }
      fewest = std::min<int64_t>(fewest, clusters);
    } else {
      int per_sm = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, p.threads, p.smem_bytes));
      fewest = std::min<int64_t>(fewest, static_cast<int64_t>(per_sm) * dev.sms);
    }
  }
  return fewest;
}

template <typename scalar_t>
bool plan_path(SweepPlan& p, int B, int H, const Device& dev, const char** why_not) {
  const size_t elem = sizeof(scalar_t);
  switch (p.path) {
    case SweepPath::kBlock: {
      p.units = H;
      p.slices = 1;
      if (!plan_tiles(p, B, H, elem, dev, 1)) {
        *why_not = "w_hh does not fit one block's shared memory";
        return false;
      }
      const int64_t at_once = resident<scalar_t>(p, dev);
      if (at_once > 0 && p.tiles <= kMaxWaves * at_once) return true;
      *why_not = "the batch needs too many waves of blocks";
      return false;
    }
    case SweepPath::kCluster:
      if (!dev.clusters) {
        *why_not = "thread-block clusters need sm_90 or newer";
        return false;
      }
      for (int size = 2; size <= kMaxCluster; size *= 2) {
        p.units = ceil_div(H, size);
        p.slices = ceil_div(H, p.units);
        if (!plan_tiles(p, B, H, elem, dev, p.slices)) continue;
        const int64_t at_once = resident<scalar_t>(p, dev);
        if (at_once > 0 && p.tiles <= kMaxWaves * at_once) return true;
      }
      *why_not = "w_hh does not fit the shared memory of a 16-block cluster, or the batch needs "
                 "too many waves of clusters, or the kernels were not built for sm_90";
      return false;
    case SweepPath::kGrid:
      if (!dev.cooperative) {
        *why_not = "the device does not support cooperative launch";
        return false;
      }
      // Fewest tiles first: every tile holds a whole copy of w_hh across its blocks.
      for (int tiles = 1; tiles <= std::min(B, dev.sms); ++tiles) {
        p.rows = ceil_div(B, tiles);
        p.tiles = ceil_div(B, p.rows);
        p.units = ceil_div(H, dev.sms / p.tiles);
        p.slices = ceil_div(H, p.units);
        if (finish_plan(p, H, elem, dev) &&
            static_cast<int64_t>(p.slices) * p.tiles <= resident<scalar_t>(p, dev))
          return true;
      }
      *why_not = "w_hh and the state do not fit the shared memory of co-resident blocks";
      return false;
    default:
      return false;
  }
}

}  // namespace

SweepPath sweep_path_from_env() {
  const char* value = std::getenv("CHARRNN_CUDA_SWEEP");
  return value == nullptr || *value == '\0' ? SweepPath::kAuto : sweep_path_from_name(value);
}

SweepPath sweep_path_from_name(const char* value) {
  for (SweepPath path : {SweepPath::kAuto, SweepPath::kBlock, SweepPath::kCluster,
                         SweepPath::kGrid, SweepPath::kSteps})
    if (std::strcmp(value, sweep_path_name(path)) == 0) return path;
  TORCH_CHECK_VALUE(false, "charrnn: CHARRNN_CUDA_SWEEP must be one of auto, block, cluster, grid, "
                    "steps; got '", value, "'");
}

const char* sweep_path_name(SweepPath path) {
  switch (path) {
    case SweepPath::kAuto: return "auto";
    case SweepPath::kBlock: return "block";
    case SweepPath::kCluster: return "cluster";
    case SweepPath::kGrid: return "grid";
    default: return "steps";
  }
}

template <typename scalar_t>
SweepPlan plan_sweep_typed(SweepPath requested, int B, int H, const char** why_not) {
  int dev_index = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev_index));
  // Planning queries the driver a dozen times; a training run asks the same question every
  // call, so answers are kept per (device, path, B, H, dtype).
  struct Answer {
    SweepPlan plan;
    const char* why_not;
  };
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int>, Answer> answers;
  const auto key = std::make_tuple(dev_index, static_cast<int>(requested), B, H);
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (auto it = answers.find(key); it != answers.end()) {
      if (why_not) *why_not = it->second.why_not;
      return it->second.plan;
    }
  }
  const Device dev(dev_index);
  Answer answer{SweepPlan{}, "unknown reason"};
  if (requested == SweepPath::kAuto) {
    for (SweepPath path : {SweepPath::kBlock, SweepPath::kCluster, SweepPath::kGrid}) {
      SweepPlan plan;
      plan.path = path;
      const char* reason = "";
      if (plan_path<scalar_t>(plan, B, H, dev, &reason)) {
        answer.plan = plan;
        break;
      }
    }
  } else if (requested != SweepPath::kSteps) {
    SweepPlan plan;
    plan.path = requested;
    if (plan_path<scalar_t>(plan, B, H, dev, &answer.why_not)) answer.plan = plan;
  }
  const std::lock_guard<std::mutex> lock(mutex);
  answers.emplace(key, answer);
  if (why_not) *why_not = answer.why_not;
  return answer.plan;
}

SweepPlan plan_sweep(SweepPath requested, int64_t B, int64_t H, size_t elem_size,
                     const char** why_not) {
  // Larger sizes than an int holds never fit on chip; the per-step path takes them.
  if (B < 1 || H < 1 || B > (1 << 30) || H > (1 << 30)) {
    if (why_not) *why_not = "B and H must be between 1 and 2^30 for a persistent sweep";
    return SweepPlan{};
  }
  return elem_size == sizeof(double)
             ? plan_sweep_typed<double>(requested, static_cast<int>(B), static_cast<int>(H), why_not)
             : plan_sweep_typed<float>(requested, static_cast<int>(B), static_cast<int>(H), why_not);
}

template <typename scalar_t>
void launch_sweep(const SweepPlan& p, bool backward, const SweepArgs<scalar_t>& args,
                  cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(p.path != SweepPath::kSteps && p.path != SweepPath::kAuto);
  // plan_sweep made this plan, and on the way raised the kernel's shared-memory limit (and
  // allowed its cluster size) on this device.
  const Kernel<scalar_t> kernel = kernel_for<scalar_t>(p, backward);
  const dim3 grid(p.slices, p.tiles), block(p.threads);
  int units = p.units, rows = p.rows, groups = p.groups;
  switch (p.path) {
    case SweepPath::kBlock:
      kernel<<<grid, block, p.smem_bytes, stream>>>(args, units, rows, groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    case SweepPath::kCluster: {
      cudaLaunchConfig_t config = {};
      config.gridDim = grid;
      config.blockDim = block;
      config.dynamicSmemBytes = p.smem_bytes;
      config.stream = stream;
      cudaLaunchAttribute attr = cluster_attribute(p.slices);
      config.attrs = &attr;
      config.numAttrs = 1;
      C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args, units, rows, groups));
      return;
    }
    default: {
      void* params[] = {const_cast<SweepArgs<scalar_t>*>(&args), &units, &rows, &groups};
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block,
                                                 params, p.smem_bytes, stream));
      return;
    }
  }
}

template <typename scalar_t>
void launch_tanh_grad(scalar_t* a, const scalar_t* h, int64_t n, cudaStream_t stream) {
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
  tanh_grad_kernel<<<blocks, threads, 0, stream>>>(a, h, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_sweep<float>(const SweepPlan&, bool, const SweepArgs<float>&, cudaStream_t);
template void launch_sweep<double>(const SweepPlan&, bool, const SweepArgs<double>&, cudaStream_t);
template void launch_tanh_grad<float>(float*, const float*, int64_t, cudaStream_t);
template void launch_tanh_grad<double>(double*, const double*, int64_t, cudaStream_t);

}  // namespace charrnn::cuda
