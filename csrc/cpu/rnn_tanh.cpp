// CPU kernels of the fused tanh RNN. The sweeps' small per-step products run in the step kernels
// (step_kernels.h: w_hh packed once per call, the pointwise part fused, vectorised once per CPU
// capability); the window-sized products go through ATen's CPU GEMM (the BLAS torch was built
// with: MKL, OpenBLAS, Accelerate, or ATen's own). Design: docs/design.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <limits>
#include <string>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include "../rnn_tanh.h"
#include "dropout.h"
#include "step_kernels.h"

namespace charrnn {
namespace {

// A step's product is small ([B, H] x [H, H]). Below kSerialStepWork multiply-adds it stays on
// one thread, where waking others would cost more than it saves; above, each thread takes a
// block of hidden units (columns of h_t) and applies the pointwise part to them while they
// are still in cache. BLAS runs single-threaded inside a parallel region (MKL and OpenBLAS do).
constexpr int64_t kSerialStepWork = 1 << 17;

// Rows of a (steps times B) that the products of the overlapped backward take at a time:
// enough for the GEMMs to run near their full rate.
constexpr int64_t kProductChunkRows = 512;

int64_t product_chunk_steps(int64_t T, int64_t B) {
  return std::clamp<int64_t>((kProductChunkRows + B - 1) / B, 1, T);
}

// How long a thread spins before it sleeps while waiting on another: a step takes
// microseconds, a sleep and wake-up tens of them.
constexpr int kSpins = 2000;

// torch.set_flush_denormal sets flush-to-zero on the calling thread only. Vanishing BPTT
// gradients reach denormal floats, which x86 handles in slow microcode assists, so the pool
// threads take the caller's setting while they work for it.
class CallerFpMode {
 public:
#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
  CallerFpMode() : csr_(_mm_getcsr()) {}
  struct Scope {
    explicit Scope(unsigned csr) : saved(_mm_getcsr()) { _mm_setcsr(csr); }
    ~Scope() { _mm_setcsr(saved); }
    unsigned saved;
  };
  Scope apply() const { return Scope(csr_); }
 private:
  unsigned csr_;
#else
  struct Scope {};
  Scope apply() const { return {}; }
#endif
};

void cpu_relax() {
#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Blocks until counter >= target: a bounded spin, then std::atomic::wait (a futex on Linux).
void wait_until(const std::atomic<int64_t>& counter, int64_t target) {
  for (int spin = 0; spin < kSpins; ++spin) {
    if (counter.load(std::memory_order_acquire) >= target) return;
    cpu_relax();
  }
  for (int64_t seen = counter.load(std::memory_order_acquire); seen < target;
       seen = counter.load(std::memory_order_acquire))
    counter.wait(seen, std::memory_order_acquire);
}

// Raises counter to value (never lowers it: a failing member may have raised it to the end)
// and wakes its waiters.
void publish(std::atomic<int64_t>& counter, int64_t value) {
  int64_t seen = counter.load(std::memory_order_relaxed);
  while (seen < value && !counter.compare_exchange_weak(seen, value, std::memory_order_release,
                                                        std::memory_order_relaxed)) {
  }
  counter.notify_all();
}

// A step's hidden units split into blocks of whole panels, one per thread: [p0, p1).
struct StepBlock {
  int64_t p0, p1;
};

// The blocks of a [B, K] x [K, H] product: at most `most`, each worth a thread (see
// kSerialStepWork).
std::vector<StepBlock> step_blocks(int64_t B, int64_t H, int64_t panel, int64_t most,
                                   int64_t K) {
  const int64_t panels = (H + panel - 1) / panel, work = B * K * H;
  const int64_t worth = work < kSerialStepWork ? 1 : work / kSerialStepWork;
  const int64_t count = std::clamp<int64_t>(std::min(worth, panels), 1, std::max<int64_t>(1, most));
  std::vector<StepBlock> blocks;
  for (int64_t i = 0; i < count; ++i) blocks.push_back({panels * i / count, panels * (i + 1) / count});
  return blocks;
}

// The choices of force_cpu_choice (rnn_tanh.h): 0 leaves a choice to the shapes, 1 and 2 force
// the first and the second of its two values. Process-wide; a relaxed load per call.
std::atomic<int> forced_sweep{0};     // 1: rows, 2: units
std::atomic<int> forced_backward{0};  // 1: overlap, 2: serial

// Batch rows never meet within a window, so a sweep can also be split by rows: each thread
// takes a group of whole rows through all T steps, with no barrier between steps, where a split
// by hidden units needs one per step (costing about as much as a small step's product).
// Each thread then streams all of w_hh at every step instead of its share, so the split by rows
// is used while w_hh fits a core's L2 (1 MB: H = 512 in float32) and each group has rows enough
// for the register tile; `bench/bench_kernels.py --cpu-splits` times the two splits side by
// side. Either split computes every element in the same order, so the results do not depend on
// it. Returns the groups; 1: the split by hidden units.
constexpr int64_t kRowGroupMinRows = 4;
constexpr int64_t kRowGroupMaxWeightBytes = 1 << 20;

// The backward's serial order (backward_overlaps) splits its sweep the same way.
// force_cpu_choice("sweep", "rows"|"units") forces a split (for benchmarks and tests that
// compare them in one process).
int64_t row_groups(int64_t B, int64_t H, int64_t elem_size) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int split = forced_sweep.load(std::memory_order_relaxed);
  if (threads < 2 || split == 2) return 1;
  if (split == 1) return std::min(threads, B);
  if (H * H * elem_size > kRowGroupMaxWeightBytes) return 1;
  return std::min(threads, B / kRowGroupMinRows);
}

// Runs fn(r0, rows) for each of `groups` groups of whole batch rows [r0, r0 + rows), a group
// per thread, in the caller's floating-point mode.
template <typename Fn>
void for_each_row_group(int64_t B, int64_t groups, const Fn& fn) {
  const CallerFpMode fp_mode;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    const auto fp_scope = fp_mode.apply();
    for (int64_t g = g0; g < g1; ++g) fn(B * g / groups, B * (g + 1) / groups - B * g / groups);
  });
}

// Whether the backward overlaps the sweep with the window products (BackwardSweep) or sweeps
// with every thread first and then runs the products as whole-window GEMMs on all of them. The
// overlap leaves the sweep to half the threads (one, on two cores), each streaming its blocks of
// w_hh at every step, and the product members idle until the first chunk of steps is final. So
// it pays only while the sweep's share of w_hh stays well inside a core's L2 (256 KB: H = 256 in
// float32) and the first chunk, during which the product members wait, is at most an eighth of
// the window (B >= 64 at T = 100); otherwise all threads sweeping first is the better order.
// `bench/bench_kernels.py --cpu-splits` times both orders side by side (fused-overlap,
// fused-serial) and bench/bench_train.py the training step they sit in.
// force_cpu_choice("backward", "overlap"|"serial") forces one (for benchmarks and tests that
// compare them).
constexpr int64_t kOverlapMaxWeightBytes = 256 << 10;

bool backward_overlaps(int64_t T, int64_t B, int64_t H, int64_t elem_size) {
  const int mode = forced_backward.load(std::memory_order_relaxed);
  if (mode != 0) return mode == 1;
  return H * H * elem_size <= kOverlapMaxWeightBytes && 8 * product_chunk_steps(T, B) <= T;
}

// Elements of a packed [K, N] matrix: whole panels of kPackedLinearAlign columns, whatever this
// capability's panel, so that the size follows from the shape alone (pack_linear's fake kernel).
int64_t packed_size(int64_t N, int64_t K) {
  return (N + kPackedLinearAlign - 1) / kPackedLinearAlign * kPackedLinearAlign * K;
}

// w [N, K] (w_ih, w_hh) as the step kernels read it: w^T [K, N] (the forward's x w_ih^T and
// h_{t-1} w_hh^T) or w itself (the backward's a_{t+1} w_hh, N = K), packed into panels.
template <typename scalar_t>
at::Tensor packed(const at::Tensor& w, bool transposed) {
  const auto& kernels = cpu::step_kernels<scalar_t>();
  const int64_t N = transposed ? w.size(0) : w.size(1), K = transposed ? w.size(1) : w.size(0);
  TORCH_INTERNAL_ASSERT(kPackedLinearAlign % kernels.panel == 0);
  const int64_t size = packed_size(N, K);
  at::Tensor out = at::empty({size}, w.options());
  const int64_t used = (N + kernels.panel - 1) / kernels.panel * kernels.panel * K;
  out.narrow(0, used, size - used).zero_();  // defined values throughout: one result per input
  kernels.pack(w.const_data_ptr<scalar_t>(), transposed ? 1 : N, transposed ? K : 1, K, N,
               out.data_ptr<scalar_t>());
  return out;
}

// Rows of the input projection per task: enough to use a panel group's w from cache many times.
constexpr int64_t kProjectionRows = 64;

// output [T, B, H] = x w_ih^T + b_ih + b_hh. Its T * B rows are split among the threads in
// chunks, and the hidden units too when there are fewer chunks than threads (a generation
// step has one row per sample).
template <typename scalar_t>
void project(at::Tensor& output, const at::Tensor& x, const PackedLayer& layer) {
  const auto& kernels = cpu::step_kernels<scalar_t>();
  const int64_t rows = x.size(0) * x.size(1), E = x.size(2), H = output.size(2);
  const int64_t chunks = (rows + kProjectionRows - 1) / kProjectionRows;
  const std::vector<StepBlock> blocks = step_blocks(
      std::min(rows, kProjectionRows), H, kernels.panel,
      at::in_parallel_region() ? 1 : at::get_num_threads() / chunks, E);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  const scalar_t* w = layer.w_ih.const_data_ptr<scalar_t>();
  const scalar_t* bias = layer.bias.has_value() ? layer.bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out = output.data_ptr<scalar_t>();
  const CallerFpMode fp_mode;
  at::parallel_for(0, chunks * nb, 1, [&](int64_t i0, int64_t i1) {
    const auto fp_scope = fp_mode.apply();
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i / nb * kProjectionRows, n = std::min(kProjectionRows, rows - r);
      const StepBlock& b = blocks[i % nb];
      kernels.project(out + r * H, in + r * E, bias, w, n, E, H, H, b.p0, b.p1);
    }
  });
}

// h_t = tanh(h_t + h_{t-1} w_hh^T) over output [T, B, H], which holds the input projection;
// and, when `dropped` [T, B, H] is given, dropped_t = dropout(h_t) while h_t is in cache.
template <typename scalar_t>
void forward_sweep(at::Tensor& output, const at::Tensor& h0, const at::Tensor& packed,
                   scalar_t* dropped, const DropoutMask& mask) {
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2), step = B * H;
  const auto& kernels = cpu::step_kernels<scalar_t>();
  const cpu::DropoutKernel<scalar_t> dropout = cpu::dropout_kernel<scalar_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const scalar_t* w = packed.const_data_ptr<scalar_t>();
  const CallerFpMode fp_mode;
  const int64_t groups = row_groups(B, H, static_cast<int64_t>(sizeof(scalar_t)));
  if (groups > 1) {
    const int64_t panels = (H + kernels.panel - 1) / kernels.panel;
    for_each_row_group(B, groups, [&](int64_t r0, int64_t rows) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t first = t * step + r0 * H;  // of the group's first element
        const scalar_t* prev = t == 0 ? h0.const_data_ptr<scalar_t>() + r0 * H : out + first - step;
        kernels.forward(out + first, prev, w, rows, H, H, H, 0, panels);
        if (dropped) dropout(dropped + first, out + first, rows, H, H, first, mask);
      }
    });
    return;
  }
  const std::vector<StepBlock> blocks = step_blocks(B, H, kernels.panel, at::get_num_threads(), H);
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* prev = t == 0 ? h0.const_data_ptr<scalar_t>() : out + (t - 1) * step;
    at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t i0, int64_t i1) {
      const auto fp_scope = fp_mode.apply();
      for (int64_t i = i0; i < i1; ++i) {
        const StepBlock& b = blocks[i];
        kernels.forward(out + t * step, prev, w, B, H, H, H, b.p0, b.p1);
        const int64_t j0 = b.p0 * kernels.panel, n = std::min(b.p1 * kernels.panel, H) - j0;
        const int64_t first = t * step + j0;  // of the block's first element
        if (dropped) dropout(dropped + first, out + first, B, n, H, first, mask);
      }
    });
  }
}

// The backward's products that need only final a_t, for the steps [t0, t1), as member `part`
// of `parts`: its share of the rows of dx and of the hidden units (rows) of dw_ih, dw_hh and
// db, so that no two members write the same element. Undefined outputs are not wanted.
struct WindowProducts {
  at::Tensor a, x, h0, output, w_ih;  // [T, B, H], [T, B, E], [B, H], [T, B, H], [H, E]
  at::Tensor dx, dw_ih, dw_hh, db;    // [T, B, E], [H, E], [H, H] and [H], zeroed

  bool any() const { return dx.defined() || dw_ih.defined() || dw_hh.defined() || db.defined(); }

  void operator()(int64_t t0, int64_t t1, int64_t part, int64_t parts) const {
    const int64_t B = a.size(1), H = a.size(2), E = x.size(2), rows = (t1 - t0) * B;
    const at::Tensor a_c = a.narrow(0, t0, t1 - t0).view({rows, H});
    if (dx.defined()) {  // dx_c = a_c w_ih
      const int64_t r0 = rows * part / parts, r1 = rows * (part + 1) / parts;
      at::Tensor dx_rows = dx.view({a.size(0) * B, E}).narrow(0, t0 * B + r0, r1 - r0);
      at::mm_out(dx_rows, a_c.narrow(0, r0, r1 - r0), w_ih);
    }
    const int64_t j0 = H * part / parts, n = H * (part + 1) / parts - j0;
    if (n == 0) return;
    const at::Tensor a_t = a_c.narrow(1, j0, n).t();  // [n, rows]
    if (dw_ih.defined()) dw_ih.narrow(0, j0, n).addmm_(a_t, x.narrow(0, t0, t1 - t0).view({rows, E}));
    if (dw_hh.defined()) {  // += a_c^T h_prev, where h_prev of step 0 is h0, of step t output[t-1]
      at::Tensor dw = dw_hh.narrow(0, j0, n);
      if (t0 == 0) {
        dw.addmm_(a_t.narrow(1, 0, B), h0);
        if (t1 > 1) dw.addmm_(a_t.narrow(1, B, rows - B), output.narrow(0, 0, t1 - 1).view({rows - B, H}));
      } else {
        dw.addmm_(a_t, output.narrow(0, t0 - 1, t1 - t0).view({rows, H}));
      }
    }
    if (db.defined()) db.narrow(0, j0, n).add_(a_t.sum(1));
  }
};

// a_t = (g_t + a_{t+1} w_hh) * (1 - h_t^2) for t = T-1 .. 0, built in place over a [T, B, H]
// (a copy of grad_output), with grad_h_n added at T-1. A team of sweep members takes the
// (step, block) pairs in step order, so each step waits only for the one before it; any
// number of members, from one up, completes the sweep, so none can wait on a member that
// never came. Product members compute the window products of each chunk of steps once the
// sweep has finished it; they own disjoint parts of the outputs. The products of the first
// steps, the last to be final, are the sweep's own tail (split_tail).
template <typename scalar_t>
class BackwardSweep {
 public:
  BackwardSweep(at::Tensor& a, const at::Tensor& grad_h_n, const at::Tensor& output,
                const at::Tensor& w_hh, const WindowProducts& products, int64_t sweep_members)
      : a_(a), grad_h_n_(grad_h_n), output_(output), products_(products),
        T_(a.size(0)), B_(a.size(1)), H_(a.size(2)),
        packed_(packed<scalar_t>(w_hh, /*transposed=*/false)),
        blocks_(step_blocks(B_, H_, cpu::step_kernels<scalar_t>().panel, sweep_members, H_)),
        chunk_(product_chunk_steps(T_, B_)) {}

  int64_t sweep_members() const { return static_cast<int64_t>(blocks_.size()); }

  // Members 0 .. sweep_members()-1 sweep, the next `product_members` compute the products.
  // Member 0 comes first wherever at::parallel_for runs them (on the calling thread, or first
  // in order when fewer threads than members come).
  void run(int64_t product_members) {
    if (product_members > 0) split_tail(product_members);
    const CallerFpMode fp_mode;
    at::parallel_for(0, sweep_members() + product_members, 1, [&](int64_t m0, int64_t m1) {
      const auto fp_scope = fp_mode.apply();
      // The pool threads' own autograd state would record the products (and refuse out=).
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t m = m0; m < m1; ++m) {
        try {
          if (m < sweep_members()) sweep_member();
          else product_member(m - sweep_members(), product_members);
        } catch (...) {  // release every waiting member, then let at::parallel_for rethrow
          failed_.store(true);
          publish(steps_done_, T_);
          publish(steps_final_, T_);
          throw;
        }
      }
    });
    for (const auto& [sum, part] : {std::pair{products_.dw_ih, tail_.dw_ih},
                                    {products_.dw_hh, tail_.dw_hh}, {products_.db, tail_.db}})
      if (part.defined()) sum.add_(part);
  }

 private:
  void sweep_member() {
    const auto& kernels = cpu::step_kernels<scalar_t>();
    const int64_t nb = sweep_members(), step = B_ * H_;
    scalar_t* a = a_.data_ptr<scalar_t>();
    const scalar_t* h = output_.const_data_ptr<scalar_t>();
    const scalar_t* w = packed_.const_data_ptr<scalar_t>();
    for (;;) {
      const int64_t ticket = tickets_.fetch_add(1, std::memory_order_relaxed);
      const int64_t k = ticket / nb, t = T_ - 1 - k;  // the k-th step of the sweep is t
      if (k >= T_) return;
      wait_until(steps_done_, k);
      if (failed_.load()) return;
      const StepBlock& b = blocks_[ticket % nb];
      const bool last = t + 1 == T_;
      kernels.backward(a + t * step, last ? grad_h_n_.const_data_ptr<scalar_t>() : nullptr,
                       h + t * step, last ? nullptr : a + (t + 1) * step, w, B_, H_, H_, H_, b.p0,
                       b.p1);
      if (blocks_done_.fetch_add(1, std::memory_order_acq_rel) + 1 < (k + 1) * nb) continue;
      // This member finished step k, the last of its blocks.
      if (nb > 1) publish(steps_done_, k + 1);
      else steps_done_.store(k + 1, std::memory_order_relaxed);  // read by this member alone
      if ((k + 1) % chunk_ == 0 || t == 0) publish(steps_final_, k + 1);
      if (t == 0 && tail_steps_ > 0) tail_(0, tail_steps_, 0, 1);
    }
  }

  // The products of the first tail_steps_ steps, the last to be final, are the sweep's own to
  // compute once it is done, so that the sweep's thread does not idle while the product members
  // finish: into dw buffers of its own (added at the end; dx rows are disjoint anyway). The
  // split comes from the shapes alone, never from timing, so the sums and the results are the
  // same on every run: the chunk boundary that best balances the sweep plus its tail against
  // the product members' share, counted in multiply-adds.
  void split_tail(int64_t product_members) {
    const int64_t E = products_.x.size(2), chunks = (T_ + chunk_ - 1) / chunk_;
    const double per_row = (products_.dx.defined() ? E * H_ : 0) +
                           (products_.dw_ih.defined() ? H_ * E : 0) +
                           (products_.dw_hh.defined() ? H_ * H_ : 0);
    const double sweep = double(T_) * B_ * H_ * H_ / sweep_members();
    double best = std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k <= chunks; ++k) {
      const int64_t split = std::max<int64_t>(0, T_ - (chunks - k) * chunk_);
      const double time = std::max(sweep + split * B_ * per_row,
                                   (T_ - split) * B_ * per_row / product_members);
      if (time < best) best = time, tail_steps_ = split;
    }
    if (tail_steps_ == 0) return;
    tail_ = products_;
    for (at::Tensor* part : {&tail_.dw_ih, &tail_.dw_hh, &tail_.db})
      if (part->defined()) *part = at::zeros_like(*part);
  }

  void product_member(int64_t part, int64_t parts) {
    for (int64_t t1 = T_; t1 > tail_steps_;) {
      const int64_t t0 = std::max<int64_t>(tail_steps_, t1 - chunk_);
      wait_until(steps_final_, T_ - t0);
      if (failed_.load()) return;
      products_(t0, t1, part, parts);
      t1 = t0;
    }
  }

  at::Tensor& a_;
  const at::Tensor &grad_h_n_, &output_;
  const WindowProducts& products_;
  const int64_t T_, B_, H_;
  const at::Tensor packed_;
  const std::vector<StepBlock> blocks_;
  const int64_t chunk_;  // steps per chunk of the products
  int64_t tail_steps_ = 0;
  WindowProducts tail_;  // the products of steps [0, tail_steps_), with dw buffers of their own
  std::atomic<int64_t> tickets_{0}, blocks_done_{0};
  std::atomic<int64_t> steps_done_{0};   // the sweep's first steps_done_ steps are done
  std::atomic<int64_t> steps_final_{0};  // the same, published per chunk for the products
  std::atomic<bool> failed_{false};
};

// The serial order's sweep split by batch rows (row_groups): each thread carries its rows from
// step T-1 down to 0 with no barrier between steps (a barrier per step waits on the slowest
// thread of every step, which on a shared machine made the split by hidden units the most
// variable part of the backward). Every element is computed in the same order as in that split.
template <typename scalar_t>
void backward_row_sweep(at::Tensor& a, const at::Tensor& grad_h_n, const at::Tensor& output,
                        const at::Tensor& w_hh, int64_t groups) {
  const int64_t T = a.size(0), B = a.size(1), H = a.size(2), step = B * H;
  const auto& kernels = cpu::step_kernels<scalar_t>();
  const at::Tensor packed_w = packed<scalar_t>(w_hh, /*transposed=*/false);
  const int64_t panels = (H + kernels.panel - 1) / kernels.panel;
  scalar_t* a_data = a.data_ptr<scalar_t>();
  const scalar_t* h = output.const_data_ptr<scalar_t>();
  const scalar_t* g_n = grad_h_n.const_data_ptr<scalar_t>();
  const scalar_t* w = packed_w.const_data_ptr<scalar_t>();
  for_each_row_group(B, groups, [&](int64_t r0, int64_t rows) {
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t first = t * step + r0 * H;  // of the group's first element
      const bool last = t + 1 == T;
      kernels.backward(a_data + first, last ? g_n + r0 * H : nullptr, h + first,
                       last ? nullptr : a_data + first + step, w, rows, H, H, H, 0, panels);
    }
  });
}

}  // namespace

std::string force_cpu_choice(const std::string& knob, const std::optional<std::string>& value) {
  struct Knob {
    const char* name;
    std::atomic<int>& choice;
    const char* values[3];  // by choice: auto, then the two it forces
  };
  static Knob knobs[] = {{"sweep", forced_sweep, {"auto", "rows", "units"}},
                         {"backward", forced_backward, {"auto", "overlap", "serial"}}};
  Knob* k = nullptr;
  for (Knob& candidate : knobs)
    if (knob == candidate.name) k = &candidate;
  TORCH_CHECK_VALUE(k != nullptr, "charrnn: the forced CPU choices are sweep and backward, got '",
                    knob, "'");
  if (!value.has_value()) return k->values[k->choice.load(std::memory_order_relaxed)];
  int wanted = -1;
  for (int i = 0; i < 3; ++i)
    if (*value == k->values[i]) wanted = i;
  TORCH_CHECK_VALUE(wanted >= 0, "charrnn: the CPU ", knob, " choice must be ", k->values[0], ", ",
                    k->values[1], " or ", k->values[2], ", got '", *value, "'");
  return k->values[k->choice.exchange(wanted, std::memory_order_relaxed)];
}

PackedLayer pack_layer_cpu(const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
                           const std::optional<at::Tensor>& b_ih,
                           const std::optional<at::Tensor>& b_hh) {
  const at::Tensor w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  PackedLayer layer;
  AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "pack_layer_cpu", [&] {
    layer.w_ih = packed<scalar_t>(w_ih, /*transposed=*/true);
    layer.w_hh = packed<scalar_t>(w_hh, /*transposed=*/true);
  });
  if (b_ih.has_value() && b_hh.has_value()) layer.bias = (*b_ih + *b_hh).contiguous();
  else if (b_ih.has_value() || b_hh.has_value()) layer.bias = (b_ih.has_value() ? *b_ih : *b_hh).contiguous();
  return layer;
}

std::tuple<at::Tensor, at::Tensor> rnn_tanh_output_packed_cpu(
    const at::Tensor& x, const at::Tensor& h0, const PackedLayer& layer, double dropout,
    int64_t seed) {
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  at::Tensor output = at::empty({T, B, H}, x.options());
  at::Tensor dropped = dropout > 0 ? at::empty_like(output) : at::empty({0}, output.options());
  // The sweep adds h_{t-1} w_hh^T into each step's slice of the projection and applies tanh.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_tanh_forward_cpu", [&] {
    project<scalar_t>(output, x, layer);
    forward_sweep<scalar_t>(output, h0, layer.w_hh,
                            dropout > 0 ? dropped.data_ptr<scalar_t>() : nullptr,
                            make_dropout_mask(dropout, seed));
  });
  return {output, dropped};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_tanh_forward_cpu(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, double dropout,
    int64_t seed) {
  check_forward_args(x, h0, w_ih, w_hh, b_ih, b_hh);
  check_dropout(dropout);
  auto [output, dropped] = rnn_tanh_output_packed_cpu(
      x.contiguous(), h0.contiguous(), pack_layer_cpu(w_ih, w_hh, b_ih, b_hh), dropout, seed);
  return {output, output[x.size(0) - 1].clone(), dropped};
}

at::Tensor pack_linear_cpu(const at::Tensor& weight) {
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble,
                   "charrnn: pack_linear's weight must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) > 0 && weight.size(1) > 0,
                    "charrnn: pack_linear's weight must have shape [N, K] with N, K > 0, got shape ",
                    weight.sizes());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "pack_linear_cpu", [&] {
    out = packed<scalar_t>(weight.contiguous(), /*transposed=*/true);
  });
  return out;
}

at::Tensor packed_linear_cpu(const at::Tensor& input_in, const at::Tensor& packed_weight,
                             int64_t out_features, const std::optional<at::Tensor>& bias_in) {
  TORCH_CHECK_TYPE(input_in.scalar_type() == at::kFloat || input_in.scalar_type() == at::kDouble,
                   "charrnn: packed_linear's input must be float32 or float64, got ", input_in.scalar_type());
  TORCH_CHECK_VALUE(input_in.dim() == 2 && input_in.size(0) > 0 && input_in.size(1) > 0,
                    "charrnn: packed_linear's input must have shape [B, K] with B, K > 0, got shape ",
                    input_in.sizes());
  TORCH_CHECK_VALUE(out_features > 0, "charrnn: packed_linear's out_features must be > 0, got ",
                    out_features);
  const int64_t B = input_in.size(0), K = input_in.size(1), N = out_features;
  TORCH_CHECK_VALUE(packed_weight.dim() == 1 && packed_weight.numel() == packed_size(N, K) &&
                        packed_weight.is_contiguous(),
                    "charrnn: packed_linear's packed must be pack_linear(weight) of a weight [N, K] = [",
                    N, ", ", K, "] (out_features, input's K): a contiguous [", packed_size(N, K),
                    "] tensor, got shape ", packed_weight.sizes());
  TORCH_CHECK_TYPE(packed_weight.scalar_type() == input_in.scalar_type(),
                   "charrnn: packed_linear's packed must have the input's dtype (",
                   input_in.scalar_type(), "), got ", packed_weight.scalar_type());
  TORCH_CHECK_VALUE(packed_weight.device() == input_in.device(),
                    "charrnn: packed_linear's packed must be on the input's device (", input_in.device(),
                    "), got ", packed_weight.device());
  if (bias_in.has_value()) {
    TORCH_CHECK_VALUE(bias_in->dim() == 1 && bias_in->size(0) == N, "charrnn: packed_linear's bias "
                      "must have shape [N] = [", N, "] (out_features), got shape ", bias_in->sizes());
    TORCH_CHECK_TYPE(bias_in->scalar_type() == input_in.scalar_type() && bias_in->device() == input_in.device(),
                     "charrnn: packed_linear's bias must have the input's dtype and device (",
                     input_in.scalar_type(), ", ", input_in.device(), "), got ", bias_in->scalar_type(),
                     ", ", bias_in->device());
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  PackedLayer layer{packed_weight, {}, bias_in.has_value() ? std::optional(bias_in->contiguous()) : std::nullopt};
  at::Tensor output = at::empty({1, B, N}, input_in.options());
  AT_DISPATCH_FLOATING_TYPES(input_in.scalar_type(), "packed_linear_cpu", [&] {
    project<scalar_t>(output, input_in.contiguous().view({1, B, K}), layer);
  });
  return output.view({B, N});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_tanh_backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& grad_h_n_in, const at::Tensor& x_in,
    const at::Tensor& h0_in, const at::Tensor& w_ih_in, const at::Tensor& w_hh_in,
    const at::Tensor& output_in, GradMask output_mask, double dropout, int64_t seed) {
  check_backward_args(grad_output_in, grad_h_n_in, x_in, h0_in, w_ih_in, w_hh_in, output_in);
  check_dropout(dropout);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto [want_dx, want_dh0, want_dw_ih, want_dw_hh, want_db] = output_mask;
  if (!(want_dx || want_dh0 || want_dw_ih || want_dw_hh || want_db)) return {};
  const at::Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(),
                   w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous(),
                   output = output_in.contiguous(), grad_h_n = grad_h_n_in.contiguous();
  const int64_t T = x.size(0), B = x.size(1), E = x.size(2), H = w_hh.size(0);
  const auto opts = x.options();

  // One allocation even when grad_output is an expanded view (the gradient of out.sum()). With
  // dropout, g_t = dL/dh_t is the gradient of the dropped output through the mask, drawn again.
  at::Tensor a = dropout > 0 ? cpu::dropout_cpu(grad_output_in, make_dropout_mask(dropout, seed))
                             : grad_output_in.clone(at::MemoryFormat::Contiguous);
  at::Tensor dh0 = want_dh0 ? at::empty({B, H}, opts) : at::Tensor();
  const WindowProducts products{a, x, h0, output, w_ih,
                                want_dx ? at::empty({T, B, E}, opts) : at::Tensor(),
                                want_dw_ih ? at::zeros({H, E}, opts) : at::Tensor(),
                                want_dw_hh ? at::zeros({H, H}, opts) : at::Tensor(),
                                want_db ? at::zeros({H}, opts) : at::Tensor()};

  // Threads: with the overlap up to half sweep (as many as a step is worth, see
  // kSerialStepWork) and the rest compute the products of finished chunks meanwhile; without
  // it (and on one thread) all sweep, split by rows where the forward would be, then the
  // products follow as whole-window GEMMs.
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const bool overlap = backward_overlaps(T, B, H, static_cast<int64_t>(x.element_size())) &&
                       products.any() && threads > 1;
  const int64_t most_sweeping = overlap ? std::max<int64_t>(1, threads / 2) : threads;
  const int64_t groups = overlap ? 1 : row_groups(B, H, static_cast<int64_t>(x.element_size()));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnn_tanh_backward_cpu", [&] {
    if (groups > 1) {
      backward_row_sweep<scalar_t>(a, grad_h_n, output, w_hh, groups);
      return;
    }
    BackwardSweep<scalar_t> sweep(a, grad_h_n, output, w_hh, products, most_sweeping);
    sweep.run(overlap ? threads - sweep.sweep_members() : 0);
  });
  // After the sweep on every path (outside its parallel region, where BLAS may thread), so that
  // dh0 does not depend on how the sweep was split.
  if (want_dh0) at::mm_out(dh0, a[0], w_hh);
  if (products.any() && !overlap) products(0, T, 0, 1);
  return {products.dx, dh0, products.dw_ih, products.dw_hh, products.db};
}

TORCH_LIBRARY_IMPL(charrnn, CPU, m) {
  m.impl("rnn_tanh_forward", &rnn_tanh_forward_cpu);
  m.impl("rnn_tanh_backward", &rnn_tanh_backward_cpu);
  m.impl("pack_linear", &pack_linear_cpu);
  m.impl("packed_linear", &packed_linear_cpu);
}

}  // namespace charrnn
