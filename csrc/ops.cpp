// The op schemas (one place for every device), and the checks and the input projection
// that all kernels share.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "rnn_tanh.h"

namespace charrnn {

namespace {

void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const char* shape,
                  const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.dim() == dim, "charrnn: ", name, " must have shape ", shape,
                    " (", dim, " dimensions), got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), "charrnn: ", name,
                   " must have the dtype of x (", like.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), "charrnn: ", name,
                    " must be on the device of x (", like.device(), "), got ", t.device());
}

void check_size(const at::Tensor& t, const char* name, int64_t d, int64_t expected,
                const char* shape) {
  TORCH_CHECK_VALUE(t.size(d) == expected, "charrnn: ", name, " must have shape ", shape,
                    " with size ", expected, " in dimension ", d, ", got shape ", t.sizes());
}

}  // namespace

void check_forward_args(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "charrnn: x must be float32 or float64, got ", x.scalar_type());
  check_tensor(x, "x", 3, "[T, B, E]", x);
  TORCH_CHECK_VALUE(x.size(0) > 0 && x.size(1) > 0, "charrnn: x [T, B, E] needs T > 0 and B > 0, got shape ",
                    x.sizes());
  const int64_t B = x.size(1), E = x.size(2);
  check_tensor(w_hh, "w_hh", 2, "[H, H]", x);
  const int64_t H = w_hh.size(0);
  TORCH_CHECK_VALUE(H > 0, "charrnn: w_hh [H, H] needs H > 0, got shape ", w_hh.sizes());
  check_size(w_hh, "w_hh", 1, H, "[H, H]");
  check_tensor(h0, "h0", 2, "[B, H]", x);
  check_size(h0, "h0", 0, B, "[B, H] (B from x [T, B, E])");
  check_size(h0, "h0", 1, H, "[B, H] (H from w_hh [H, H])");
  check_tensor(w_ih, "w_ih", 2, "[H, E]", x);
  check_size(w_ih, "w_ih", 0, H, "[H, E] (H from w_hh [H, H])");
  check_size(w_ih, "w_ih", 1, E, "[H, E] (E from x [T, B, E])");
  for (const auto& [b, name] : {std::pair{&b_ih, "b_ih"}, std::pair{&b_hh, "b_hh"}}) {
    if (b->has_value()) {
      check_tensor(**b, name, 1, "[H]", x);
      check_size(**b, name, 0, H, "[H] (H from w_hh [H, H])");
    }
  }
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                         const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                         const at::Tensor& w_hh, const at::Tensor& output) {
  check_forward_args(x, h0, w_ih, w_hh, std::nullopt, std::nullopt);
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0);
  for (const auto& [t, name] : {std::pair{&output, "output"}, std::pair{&grad_output, "grad_output"}}) {
    check_tensor(*t, name, 3, "[T, B, H]", x);
    check_size(*t, name, 0, T, "[T, B, H]");
    check_size(*t, name, 1, B, "[T, B, H]");
    check_size(*t, name, 2, H, "[T, B, H]");
  }
  check_tensor(grad_h_n, "grad_h_n", 2, "[B, H]", x);
  check_size(grad_h_n, "grad_h_n", 0, B, "[B, H]");
  check_size(grad_h_n, "grad_h_n", 1, H, "[B, H]");
}

void check_dropout(double dropout) {
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout <= 1.0,
                    "charrnn: dropout must be a probability in [0, 1], got ", dropout);
}

at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih,
                            const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh) {
  const int64_t T = x.size(0), B = x.size(1), E = x.size(2), H = w_ih.size(0);
  at::Tensor output = at::empty({T, B, H}, x.options());
  at::Tensor out2d = output.view({T * B, H});
  const at::Tensor x2d = x.view({T * B, E});
  if (b_ih.has_value() || b_hh.has_value()) {
    const at::Tensor bias = b_ih.has_value() && b_hh.has_value() ? *b_ih + *b_hh
                            : b_ih.has_value()                   ? *b_ih
                                                                 : *b_hh;
    at::addmm_out(out2d, bias, x2d, w_ih.t());
  } else {
    at::mm_out(out2d, x2d, w_ih.t());
  }
  return output;
}

TORCH_LIBRARY(charrnn, m) {
  // dropout, seed: the mask of dropout_mask.h on the layer's output; dropped is the output after
  // it ([0] when dropout is 0), output the undropped h_1..h_T (rnn_tanh.h).
  m.def("rnn_tanh_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh,"
        " float dropout=0.0, int seed=0) -> (Tensor output, Tensor h_n, Tensor dropped)");
  // output_mask: which of (dx, dh0, dw_ih, dw_hh, db) to compute; the others come back as None.
  // dropout, seed: the forward's; grad_output is then the gradient of dropped.
  m.def("rnn_tanh_backward(Tensor grad_output, Tensor grad_h_n, Tensor x, Tensor h0, Tensor w_ih,"
        " Tensor w_hh, Tensor output, bool[5] output_mask=[True, True, True, True, True],"
        " float dropout=0.0, int seed=0) -> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db)");
  // Generation's products for the cells without a fused decode, CPU only: rnn_tanh.h
  m.def("pack_linear(Tensor weight) -> Tensor packed");
  m.def("packed_linear(Tensor input, Tensor packed, int out_features, Tensor? bias) -> Tensor");
  // Generation: decode.h
  m.def("rnn_tanh_decode(Tensor logits, Tensor h0, Tensor? embedding, Tensor[] w_ih, Tensor[] w_hh,"
        " Tensor?[] b_ih, Tensor?[] b_hh, Tensor head_weight, Tensor? head_bias, int steps,"
        " float temperature, int? top_k, Generator? generator) -> (Tensor ids, Tensor h_n, Tensor logits_n)");
}

}  // namespace charrnn

#ifdef TORCH_EXTENSION_NAME  // only the Python extension build; the CMake build has no Python
#include <torch/extension.h>
#include <torch/version.h>

#ifdef CHARRNN_WITH_CUDA
#include "cuda/sweep.h"
#endif

#ifndef CHARRNN_CUDA_ARCH_LIST
#define CHARRNN_CUDA_ARCH_LIST ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "charrnn_ext compiled kernels; importing this module registers torch.ops.charrnn";
  m.def("build_info", [] {
    pybind11::dict info;
    info["torch_version"] = TORCH_VERSION;
#ifdef CHARRNN_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_arch_list"] = CHARRNN_CUDA_ARCH_LIST;
    info["cpu_capability"] = charrnn::cpu_capability();
    info["cpu_capabilities"] = charrnn::cpu_capabilities_compiled();
    return info;
  }, "The torch version the extension was compiled against, whether CUDA kernels were "
     "compiled, the CUDA architectures they were compiled for, the CPU kernels' vectorised "
     "variant in use (cpu_capability: default, avx2, avx512 or sve256; ATEN_CPU_CAPABILITY "
     "forces a lower one) and every variant compiled (cpu_capabilities).");
  m.def("_force_cpu_choice", [](const std::string& knob, std::optional<std::string> value) {
    try {
      return charrnn::force_cpu_choice(knob, value);
    } catch (const c10::ValueError& e) {
      throw pybind11::value_error(e.what_without_backtrace());
    }
  }, "Private, for benchmarks and tests: force a choice of the CPU kernels for the whole process "
     "(not per thread). knob 'sweep': 'rows', 'units' or 'auto'; knob 'backward': 'overlap', "
     "'serial' or 'auto' (auto: chosen by the shapes, the default). Returns the previous value; "
     "without a value, the current one. ValueError for an unknown knob or value. "
     "charrnn_ext.ops._forced_cpu_choice sets and restores it around a block.",
     pybind11::arg("knob"), pybind11::arg("value") = pybind11::none());
#ifdef CHARRNN_WITH_CUDA
  m.def("cuda_sweep_plan", [](int64_t B, int64_t H, int64_t elem_size, const std::string& path) {
    namespace cc = charrnn::cuda;
    const cc::SweepPath requested = cc::sweep_path_from_name(path.c_str());
    const char* why_not = nullptr;
    const cc::SweepPlan p = cc::plan_sweep(requested, B, H, elem_size, &why_not);
    TORCH_CHECK(requested == cc::SweepPath::kAuto || requested == p.path, "charrnn: sweep path ",
                path, " cannot run at B=", B, ", H=", H, ": ", why_not ? why_not : "unknown reason");
    pybind11::dict plan;
    plan["path"] = cc::sweep_path_name(p.path);
    for (const auto& [name, value] : {std::pair{"units", p.units}, {"slices", p.slices},
                                      {"rows", p.rows}, {"tiles", p.tiles}, {"groups", p.groups},
                                      {"threads", p.threads}})
      plan[name] = value;
    plan["smem_bytes"] = p.smem_bytes;
    return plan;
  }, "The launch plan of a sweep on the current GPU (path: auto, block, cluster, grid or steps) "
     "for batch B, hidden size H and elements of elem_size bytes; raises if a forced path cannot run.",
     pybind11::arg("B"), pybind11::arg("H"), pybind11::arg("elem_size"), pybind11::arg("path") = "auto");
#endif
}
#endif
