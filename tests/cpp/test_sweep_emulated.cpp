// Runs the persistent sweep kernels of csrc/cuda/sweep_kernels.cuh on the CPU, each CUDA thread
// a host thread (tests/cpp/emulated_cuda), against a plain loop of the recurrence in sweep.h.
// Covers the three synchronisation scopes, both directions, float and double, one and several
// rows per pass, split k, partial slices and partial tiles, and the forward's dropout epilogue
// against dropout_mask.h's mask of the recurrence's output. Exit status 0: all agree.
//   g++ -std=c++20 -O1 -pthread -Itests/cpp/emulated_cuda -Icsrc/cuda tests/cpp/test_sweep_emulated.cpp
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "sweep_kernels.cuh"

using charrnn::cuda::Kernel;
using charrnn::cuda::Layout;
using charrnn::cuda::Scope;
using charrnn::cuda::SweepArgs;

namespace {

struct Config {
  Scope scope;
  int H, B, T, units, rows, groups;
};

// One launch: every thread of every block at once (the grid scope needs all blocks resident;
// a cooperative launch guarantees as much). Shared memory starts as NaN, so a read of a slot
// that nothing wrote shows in the result.
template <typename T>
void launch(Kernel<T> kernel, const SweepArgs<T>& args, const Config& c) {
  const int slices = (c.H + c.units - 1) / c.units, tiles = (c.B + c.rows - 1) / c.rows;
  const int threads = c.units * c.groups;
  const Layout lay(c.H, c.units, c.rows, c.groups, charrnn::cuda::state_buffers(c.scope));
  const size_t bytes = static_cast<size_t>(lay.total()) * sizeof(T);
  std::vector<std::vector<double2>> shared(slices * tiles, std::vector<double2>(bytes / 16 + 1));
  for (auto& buffer : shared) std::memset(buffer.data(), 0xff, buffer.size() * sizeof(double2));
  std::vector<std::unique_ptr<std::barrier<>>> block_barriers, cluster_barriers;
  std::vector<std::vector<unsigned char*>> cluster_shared(tiles);
  for (int b = 0; b < slices * tiles; ++b) {
    block_barriers.push_back(std::make_unique<std::barrier<>>(threads));
    cluster_shared[b / slices].push_back(reinterpret_cast<unsigned char*>(shared[b].data()));
  }
  for (int y = 0; y < tiles; ++y) cluster_barriers.push_back(std::make_unique<std::barrier<>>(slices * threads));

  std::vector<std::thread> pool;
  for (int y = 0; y < tiles; ++y)
    for (int x = 0; x < slices; ++x)
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, x, y, t] {
          emu::thread_idx = {static_cast<unsigned>(t), 1, 1};
          emu::block_idx = {static_cast<unsigned>(x), static_cast<unsigned>(y), 1};
          emu::block_dim = {static_cast<unsigned>(threads), 1, 1};
          emu::grid_dim = {static_cast<unsigned>(slices), static_cast<unsigned>(tiles), 1};
          emu::shared_memory = cluster_shared[y][x];
          emu::block_barrier = block_barriers[y * slices + x].get();
          emu::cluster_barrier = cluster_barriers[y].get();
          emu::cluster_shared = &cluster_shared[y];
          emu::cluster_rank = static_cast<unsigned>(x);
          kernel(args, c.units, c.rows, c.groups);
        });
  for (auto& thread : pool) thread.join();
}

// The recurrence of sweep.h, plainly, in double.
std::vector<double> reference(bool backward, const std::vector<double>& seq,
                              const std::vector<double>& hidden, const std::vector<double>& init,
                              const std::vector<double>& w, int T, int B, int H) {
  std::vector<double> out(seq.size()), state(backward ? std::vector<double>(B * H, 0.0) : init);
  for (int i = 0; i < T; ++i) {
    const int t = backward ? T - 1 - i : i;
    for (int b = 0; b < B; ++b)
      for (int u = 0; u < H; ++u) {
        double s = seq[(t * B + b) * H + u];
        for (int k = 0; k < H; ++k) s += (backward ? w[k * H + u] : w[u * H + k]) * state[b * H + k];
        const double h = hidden[(t * B + b) * H + u];
        out[(t * B + b) * H + u] = backward ? s * (1 - h * h) : std::tanh(s);
      }
    std::copy(out.begin() + t * B * H, out.begin() + (t + 1) * B * H, state.begin());
  }
  return out;
}

template <typename T>
bool check(const Config& c, bool backward, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  const int n = c.T * c.B * c.H;
  std::vector<double> seq(n), hidden(n), init(c.B * c.H), w(c.H * c.H);
  for (auto& v : seq) v = normal(rng);
  for (auto& v : hidden) v = std::tanh(normal(rng));
  for (auto& v : init) v = 0.5 * normal(rng);
  for (auto& v : w) v = 0.9 * normal(rng) / std::sqrt(c.H);
  const std::vector<double> want = reference(backward, seq, hidden, init, w, c.T, c.B, c.H);

  std::vector<T> seq_t(seq.begin(), seq.end()), hidden_t(hidden.begin(), hidden.end()),
      init_t(init.begin(), init.end()), w_t(w.begin(), w.end());
  std::vector<unsigned long long> arrivals((c.B + c.rows - 1) / c.rows, 0);
  // The forward also writes dropout(h_t), p = 0.3; the backward has no epilogue.
  std::vector<T> dropped(backward ? 0 : n, std::numeric_limits<T>::quiet_NaN());
  const charrnn::DropoutMask mask = charrnn::make_dropout_mask(0.3, 1000 + n);
  const SweepArgs<T> args{seq_t.data(), backward ? hidden_t.data() : nullptr,
                          backward ? nullptr : init_t.data(), w_t.data(), arrivals.data(),
                          c.T, c.B, c.H, backward ? nullptr : dropped.data(), mask};
  launch(charrnn::cuda::pick_kernel<T>(backward, c.scope, c.rows), args, c);

  double err = 0, scale = 1;
  for (int i = 0; i < n; ++i) {
    double e = std::abs(seq_t[i] - want[i]);
    if (!backward) e = std::max(e, std::abs(dropped[i] - charrnn::dropout_apply(mask, i, want[i])));
    err = std::isnan(e) ? INFINITY : std::max(err, e);
    scale = std::max(scale, std::abs(want[i]));
    if (std::isinf(err)) break;
  }
  const double tol = (sizeof(T) == 8 ? 1e-12 : 1e-5) * scale;
  const char* scope = c.scope == Scope::kBlock ? "block" : c.scope == Scope::kCluster ? "cluster" : "grid";
  const bool ok = err <= tol;
  std::printf("%-4s %-7s %-8s H=%-3d B=%-2d T=%d units=%-3d rows=%d groups=%d  max err %.2e  %s\n",
              ok ? "ok" : "FAIL", scope, backward ? "backward" : "forward", c.H, c.B, c.T, c.units,
              c.rows, c.groups, err, ok ? "" : "<--");
  return ok;
}

}  // namespace

int main() {
  const Config configs[] = {
      // one block holds all units: units == H
      {Scope::kBlock, 1, 1, 1, 1, 1, 1},
      {Scope::kBlock, 5, 3, 4, 5, 1, 1},
      {Scope::kBlock, 5, 3, 4, 5, 2, 2},
      {Scope::kBlock, 37, 7, 5, 37, 3, 3},
      {Scope::kBlock, 37, 7, 5, 37, 4, 2},
      {Scope::kBlock, 16, 5, 6, 16, 5, 1},
      {Scope::kBlock, 40, 2, 3, 40, 2, 4},
      // a cluster of blocks per tile, each a slice of units (the last one partial)
      {Scope::kCluster, 13, 3, 4, 7, 1, 2},
      {Scope::kCluster, 13, 5, 3, 4, 2, 1},
      {Scope::kCluster, 40, 6, 4, 8, 3, 3},
      {Scope::kCluster, 64, 4, 3, 16, 2, 2},
      {Scope::kCluster, 9, 2, 2, 1, 1, 1},
      // co-resident blocks per tile, state through global memory and arrival counters
      {Scope::kGrid, 13, 3, 4, 4, 2, 2},
      {Scope::kGrid, 40, 7, 3, 5, 3, 2},
      {Scope::kGrid, 37, 5, 5, 10, 5, 3},
      {Scope::kGrid, 8, 9, 3, 2, 4, 1},
      {Scope::kGrid, 1, 3, 2, 1, 1, 1},
      {Scope::kGrid, 64, 40, 3, 16, 20, 1},  // the state reload takes several rounds of loads
  };
  std::mt19937 rng(0);
  int failures = 0;
  for (const Config& c : configs)
    for (bool backward : {false, true}) {
      failures += !check<float>(c, backward, rng);
      failures += !check<double>(c, backward, rng);
    }
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
