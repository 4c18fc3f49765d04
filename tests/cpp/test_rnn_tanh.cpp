// Forward and backward of one small case through the dispatcher (torch::ops charrnn::*),
// against plain loops of docs/design.md's equations in double precision; a backward that asks
// for some gradients only; each forced CPU choice (force_cpu_choice); and the CPU variant in
// use, which ATEN_CPU_CAPABILITY may force.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dropout_mask.h"
#include "rnn_tanh.h"

namespace {

using Vec = std::vector<double>;

Vec to_vec(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

double max_diff(const at::Tensor& got, const Vec& want) {
  const Vec g = to_vec(got);
  if (g.size() != want.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < g.size(); ++i) m = std::max(m, std::abs(g[i] - want[i]));
  return m;
}

}  // namespace

int main() {
  const int T = 4, B = 3, E = 5, H = 7;
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({T, B, E}, opt), h0 = at::randn({B, H}, opt);
  at::Tensor w_ih = at::randn({H, E}, opt) * 0.5, w_hh = at::randn({H, H}, opt) * 0.3;
  at::Tensor b_ih = at::randn({H}, opt), b_hh = at::randn({H}, opt);
  at::Tensor g_out = at::randn({T, B, H}, opt), g_hn = at::randn({B, H}, opt);

  auto fwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("charrnn::rnn_tanh_forward", "")
                 .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                     const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
                     int64_t)>();
  auto bwd = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("charrnn::rnn_tanh_backward", "")
                 .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                     const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     std::array<bool, 5>, double, int64_t)>();
  auto [output, h_n, none] = fwd.call(x, h0, w_ih, w_hh, b_ih, b_hh, 0.0, 0);
  auto [dx, dh0, dw_ih, dw_hh, db] = bwd.call(g_out, g_hn, x, h0, w_ih, w_hh, output, {true, true, true, true, true}, 0.0, 0);
  // Only dh0 and dw_hh: the others come back undefined.
  auto [no_dx, some_dh0, no_dw_ih, some_dw_hh, no_db] =
      bwd.call(g_out, g_hn, x, h0, w_ih, w_hh, output, {false, true, false, true, false}, 0.0, 0);
  // Dropout p = 0.5: the forward's dropped output is the mask of dropout_mask.h times output,
  // and the backward equals the undropped backward of grad_output times that mask.
  const charrnn::DropoutMask mask = charrnn::make_dropout_mask(0.5, 42);
  at::Tensor m = at::empty({T, B, H}, opt);
  for (int64_t e = 0; e < m.numel(); ++e) m.view({-1})[e] = charrnn::dropout_apply(mask, e, 1.0);
  auto [same_output, same_h_n, dropped] = fwd.call(x, h0, w_ih, w_hh, b_ih, b_hh, 0.5, 42);
  auto [ddx, ddh0, ddw_ih, ddw_hh, ddb] =
      bwd.call(g_out, g_hn, x, h0, w_ih, w_hh, output, {true, true, true, true, true}, 0.5, 42);
  auto [mdx, mdh0, mdw_ih, mdw_hh, mdb] =
      bwd.call(g_out * m, g_hn, x, h0, w_ih, w_hh, output, {true, true, true, true, true}, 0.0, 0);

  const Vec X = to_vec(x), H0 = to_vec(h0), Wi = to_vec(w_ih), Wh = to_vec(w_hh),
            Bi = to_vec(b_ih), Bh = to_vec(b_hh), G = to_vec(g_out), GN = to_vec(g_hn);
  // forward: hs[t] holds h_t for t = 0..T (hs[0] = h0)
  std::vector<Vec> hs(T + 1, Vec(B * H));
  hs[0] = H0;
  for (int t = 0; t < T; ++t)
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < H; ++i) {
        double s = Bi[i] + Bh[i];
        for (int e = 0; e < E; ++e) s += X[(t * B + b) * E + e] * Wi[i * E + e];
        for (int j = 0; j < H; ++j) s += hs[t][b * H + j] * Wh[i * H + j];
        hs[t + 1][b * H + i] = std::tanh(s);
      }
  Vec want_out;
  for (int t = 1; t <= T; ++t) want_out.insert(want_out.end(), hs[t].begin(), hs[t].end());
  // backward
  Vec dnext = GN, want_dx(T * B * E, 0), want_dwi(H * E, 0), want_dwh(H * H, 0), want_db(H, 0);
  for (int t = T - 1; t >= 0; --t) {
    Vec a(B * H);
    for (int k = 0; k < B * H; ++k)
      a[k] = (G[t * B * H + k] + dnext[k]) * (1 - hs[t + 1][k] * hs[t + 1][k]);
    Vec next(B * H, 0);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < H; ++i) {
        const double ai = a[b * H + i];
        want_db[i] += ai;
        for (int j = 0; j < H; ++j) {
          want_dwh[i * H + j] += ai * hs[t][b * H + j];
          next[b * H + j] += ai * Wh[i * H + j];
        }
        for (int e = 0; e < E; ++e) {
          want_dwi[i * E + e] += ai * X[(t * B + b) * E + e];
          want_dx[(t * B + b) * E + e] += ai * Wi[i * E + e];
        }
      }
    dnext = next;
  }

  struct Check { const char* name; double err; } checks[] = {
      {"output", max_diff(output, want_out)}, {"h_n", max_diff(h_n, hs[T])},
      {"dx", max_diff(dx, want_dx)},          {"dh0", max_diff(dh0, dnext)},
      {"dw_ih", max_diff(dw_ih, want_dwi)},   {"dw_hh", max_diff(dw_hh, want_dwh)},
      {"db", max_diff(db, want_db)},          {"masked dh0", max_diff(some_dh0, dnext)},
      {"masked dw_hh", max_diff(some_dw_hh, want_dwh)},
      {"dropout output", max_diff(same_output, want_out)},
      {"dropout dropped", max_diff(dropped, to_vec(output * m))},
      {"dropout dx", max_diff(ddx, to_vec(mdx))},     {"dropout dh0", max_diff(ddh0, to_vec(mdh0))},
      {"dropout dw_ih", max_diff(ddw_ih, to_vec(mdw_ih))}, {"dropout dw_hh", max_diff(ddw_hh, to_vec(mdw_hh))},
      {"dropout db", max_diff(ddb, to_vec(mdb))}};
  int failures = 0;
  const double kept = (dropped != 0).to(at::kDouble).mean().item<double>();
  if (none.numel() != 0 || kept < 0.2 || kept > 0.8) {
    std::printf("dropout: p = 0 returned %lld dropped elements, p = 0.5 kept %.2f FAIL\n",
                static_cast<long long>(none.numel()), kept);
    ++failures;
  }
  if (no_dx.defined() || no_dw_ih.defined() || no_db.defined()) {
    std::printf("masked-out gradients came back defined FAIL\n");
    ++failures;
  }
  for (const auto& c : checks) {
    const bool ok = c.err <= 1e-12;
    failures += !ok;
    std::printf("%-6s max abs error %.3g %s\n", c.name, c.err, ok ? "ok" : "FAIL");
  }
  // A bad shape is reported as an exception that names the argument.
  try {
    fwd.call(x, h0.t(), w_ih, w_hh, b_ih, b_hh, 0.0, 0);
    std::printf("bad h0 shape: no error FAIL\n");
    ++failures;
  } catch (const c10::Error& e) {
    const bool ok = std::string(e.what()).find("h0") != std::string::npos;
    failures += !ok;
    std::printf("bad h0 shape: %s\n", ok ? "error names h0, ok" : "error does not name h0 FAIL");
  }
  // Every forced CPU choice (force_cpu_choice: the forward and backward sweeps split by batch
  // rows or by hidden units, the backward overlapped or serial) gives the reference on two
  // threads; "auto" restores the shapes' choice, and a bad value is an error naming it.
  at::set_num_threads(2);
  for (const char* sweep : {"rows", "units"}) {
    for (const char* order : {"overlap", "serial"}) {
      charrnn::force_cpu_choice("sweep", sweep);
      charrnn::force_cpu_choice("backward", order);
      auto [f_out, f_h_n, f_none] = fwd.call(x, h0, w_ih, w_hh, b_ih, b_hh, 0.0, 0);
      auto [f_dx, f_dh0, f_dw_ih, f_dw_hh, f_db] =
          bwd.call(g_out, g_hn, x, h0, w_ih, w_hh, output, {true, true, true, true, true}, 0.0, 0);
      const double err = std::max({max_diff(f_out, want_out), max_diff(f_dx, want_dx),
                                   max_diff(f_dh0, dnext), max_diff(f_dw_ih, want_dwi),
                                   max_diff(f_dw_hh, want_dwh), max_diff(f_db, want_db)});
      const bool ok = err <= 1e-12 && charrnn::force_cpu_choice("sweep") == sweep &&
                      charrnn::force_cpu_choice("backward") == order;
      failures += !ok;
      std::printf("forced %s, %s max abs error %.3g %s\n", sweep, order, err, ok ? "ok" : "FAIL");
    }
  }
  const bool restored = charrnn::force_cpu_choice("sweep", "auto") == "units" &&
                        charrnn::force_cpu_choice("backward", "auto") == "serial" &&
                        charrnn::force_cpu_choice("sweep") == "auto";
  failures += !restored;
  std::printf("forced choices back to auto %s\n", restored ? "ok" : "FAIL");
  try {
    charrnn::force_cpu_choice("sweep", "diagonal");
    std::printf("bad forced sweep: no error FAIL\n");
    ++failures;
  } catch (const c10::ValueError& e) {
    const bool ok = std::string(e.what()).find("diagonal") != std::string::npos &&
                    charrnn::force_cpu_choice("sweep") == "auto";
    failures += !ok;
    std::printf("bad forced sweep: %s\n", ok ? "ValueError, unchanged, ok" : "wrong error FAIL");
  }
  const std::string capability = charrnn::cpu_capability();
  const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
  const bool capability_ok = !forced || capability == forced;
  failures += !capability_ok;
  std::printf("cpu capability %s%s%s %s\n", capability.c_str(), forced ? ", forced " : "",
              forced ? forced : "", capability_ok ? "ok" : "FAIL");
  return failures == 0 ? 0 : 1;
}
