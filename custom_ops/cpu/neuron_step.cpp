// CPU kernels of the fused LIF/ALIF step: torch glue around neuron_core.h.
//
// This file validates tensors, picks the state and saved-derivative types and
// splits the work over threads with at::parallel_for; the arithmetic is in the
// shared header, which the Poplar vertices include too. The ops join the
// private namespace `ipu_snn_cpu` (declared in spike_matmul.cpp) as a
// fragment; the public ops (`ipu_snn::neuron_step_fwd/bwd`) are defined in
// ipu_snn/ops/neuron_ops.py and call these through the backend registry.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "neuron_core.h"
#include "neuron_glue.h"

namespace {

namespace core = ipu_snn::core;
using namespace ipu_snn::cpu;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> neuron_fwd(
    const at::Tensor& current_in, const at::Tensor& v_in,
    const c10::optional<at::Tensor>& a_in, const at::Tensor& beta_in,
    const c10::optional<at::Tensor>& rho_in, const ParamDict& params, at::ScalarType saved_dtype,
    const c10::optional<at::Tensor>& threshold_in) {
  const char* op = "neuron_fwd";
  ParamReader reader(params, op);
  const core::NeuronScalars scalars = read_neuron(reader);
  reader.done();
  check_step_matrix(current_in, "current", op);
  check_state(v_in, "v", current_in, op);
  check_decay(beta_in, "beta", current_in, op);
  TORCH_CHECK(a_in.has_value() == adaptive(scalars) && rho_in.has_value() == adaptive(scalars), op,
              ": ALIF needs both a and rho, LIF neither; got a ",
              a_in.has_value() ? "set" : "None", " and rho ",
              rho_in.has_value() ? "set" : "None", " for kernel ", static_cast<int>(scalars.kind));
  if (a_in.has_value()) {
    check_state(*a_in, "a", current_in, op);
    check_decay(*rho_in, "rho", current_in, op);
  }
  check_saved_dtype(saved_dtype, current_in.scalar_type(), op);
  if (threshold_in.has_value()) check_decay(*threshold_in, "threshold", current_in, op);  // [N]

  const auto current = current_in.contiguous();
  // one threshold per neuron: the learned one, else the scalar repeated (one kernel variant to compile)
  const auto thresholds = threshold_in.has_value() ? threshold_in->contiguous()
                                                   : at::full({current_in.size(1)}, scalars.threshold,
                                                              current_in.options());
  const auto v = v_in.contiguous();
  const auto beta = beta_in.contiguous();
  const bool adaptive = a_in.has_value();
  const auto a = adaptive ? a_in->contiguous() : at::Tensor();
  const auto rho = adaptive ? rho_in->contiguous() : at::Tensor();
  const int64_t batch = current.size(0), n = current.size(1);
  const int64_t row_bytes = core::packed_row_bytes(n);

  auto v_new = at::empty_like(current);
  auto a_new = adaptive ? at::empty_like(current) : at::empty({0}, current.options());
  auto z = at::empty_like(current);
  auto d = at::empty(current.sizes(), current.options().dtype(saved_dtype));
  auto bits = at::empty({batch, row_bytes}, current.options().dtype(at::kByte));
  if (batch == 0 || n == 0) return {v_new, a_new, z, d, bits};

  // c10::Half converts one value at a time (an F16C intrinsic the compiler does
  // not vectorise), which made the fused loop ~8x slower; d is computed in
  // float instead and converted in one vectorised copy at the end.
  const bool via_float = saved_dtype == at::kHalf;
  auto d_out = via_float ? at::empty(current.sizes(), current.options().dtype(at::kFloat)) : d;
  AT_DISPATCH_FLOATING_TYPES(current.scalar_type(), "ipu_snn_cpu_neuron_fwd", [&] {
    using T = scalar_t;
    dispatch_saved(d_out.scalar_type(), [&](auto tag) {
      using D = decltype(tag);
      const T* cur = current.data_ptr<T>();
      const T* vp = v.data_ptr<T>();
      const T* ap = adaptive ? a.data_ptr<T>() : nullptr;
      const T* bp = beta.data_ptr<T>();
      const T* rp = adaptive ? rho.data_ptr<T>() : nullptr;
      const T* thp = thresholds.data_ptr<T>();
      T* vn = v_new.data_ptr<T>();
      T* an = adaptive ? a_new.data_ptr<T>() : nullptr;
      T* zp = z.data_ptr<T>();
      D* dp = static_cast<D*>(d_out.data_ptr());
      uint8_t* bp8 = bits.data_ptr<uint8_t>();
      // Threads own ranges of packed bytes, so no two share a byte, and each
      // packs the spikes it has just computed while they are still in cache.
      // A byte range maps to one neuron range per row it touches.
      const int64_t grain = std::max<int64_t>(1, kGrainElements / 8);
      at::parallel_for(0, batch * row_bytes, grain, [&](int64_t k0, int64_t k1) {
        int64_t k = k0;
        while (k < k1) {
          const int64_t row = k / row_bytes;
          const int64_t byte_end = std::min(k1, (row + 1) * row_bytes);
          const int64_t first = (k - row * row_bytes) * 8;
          const int64_t last = std::min(n, (byte_end - row * row_bytes) * 8);
          core::neuron_forward<T, D>(cur, vp, ap, bp, rp, n, row * n + first,
                                     row * n + last, scalars, vn, an, zp, dp, thp);
          core::pack_bits<T>(zp, n, k, byte_end, bp8);
          k = byte_end;
        }
      });
    });
  });
  if (via_float) d.copy_(d_out);
  return {v_new, a_new, z, d, bits};
}

// Backward of fire-and-reset: (gv, ga or empty), the gradients w.r.t. v before
// the reset and a after the decay; the leak's backward is the caller's
// (ipu_snn/neuron/spec.py).
std::tuple<at::Tensor, at::Tensor> neuron_bwd(
    const at::Tensor& grad_z_in, const at::Tensor& grad_v_in,
    const c10::optional<at::Tensor>& grad_a_in, const at::Tensor& bits_in,
    const at::Tensor& d_in, const ParamDict& params) {
  const char* op = "neuron_bwd";
  ParamReader reader(params, op);
  const core::NeuronScalars scalars = read_neuron(reader);
  reader.done();
  const bool adaptive = ipu_snn::cpu::adaptive(scalars);
  check_step_matrix(grad_v_in, "grad_v", op);
  check_state(grad_z_in, "grad_z", grad_v_in, op);
  TORCH_CHECK(adaptive || !grad_a_in.has_value(), op,
              ": grad_a was given for a LIF step (no adaptation)");
  if (grad_a_in.has_value()) check_state(*grad_a_in, "grad_a", grad_v_in, op);
  const int64_t batch = grad_v_in.size(0), n = grad_v_in.size(1);
  const int64_t row_bytes = core::packed_row_bytes(n);
  TORCH_CHECK(bits_in.device().is_cpu() && bits_in.scalar_type() == at::kByte &&
                  bits_in.dim() == 2 && bits_in.size(0) == batch &&
                  bits_in.size(1) == row_bytes,
              op, ": zbits must be a uint8 CPU matrix [B, ceil(N / 8)] = [", batch,
              ", ", row_bytes, "], got ", bits_in.scalar_type(), " ", bits_in.sizes(),
              " on ", bits_in.device());
  TORCH_CHECK(d_in.device().is_cpu() && d_in.sizes() == grad_v_in.sizes(), op,
              ": d must be a CPU tensor of shape ", grad_v_in.sizes(), ", got ",
              d_in.sizes(), " on ", d_in.device());
  check_saved_dtype(d_in.scalar_type(), grad_v_in.scalar_type(), op);

  const auto grad_z = grad_z_in.contiguous();
  const auto grad_v = grad_v_in.contiguous();
  const bool has_grad_a = grad_a_in.has_value();
  const auto grad_a = has_grad_a ? grad_a_in->contiguous() : at::Tensor();
  const auto bits = bits_in.contiguous();
  // Half is widened first, for the reason given in neuron_fwd: one vectorised
  // conversion costs less than converting inside the fused loop.
  const auto d = d_in.scalar_type() == at::kHalf ? d_in.to(at::kFloat) : d_in.contiguous();

  auto gv = at::empty_like(grad_v);
  auto ga = adaptive ? at::empty_like(grad_v) : at::empty({0}, grad_v.options());
  if (batch == 0 || n == 0) return {gv, ga};

  AT_DISPATCH_FLOATING_TYPES(grad_v.scalar_type(), "ipu_snn_cpu_neuron_bwd", [&] {
    using T = scalar_t;
    dispatch_saved(d.scalar_type(), [&](auto tag) {
      using D = decltype(tag);
      const T* gz = grad_z.data_ptr<T>();
      const T* gvin = grad_v.data_ptr<T>();
      const T* gain = has_grad_a ? grad_a.data_ptr<T>() : nullptr;
      const uint8_t* zb = bits.data_ptr<uint8_t>();
      const D* dp = static_cast<const D*>(d.data_ptr());
      T* gvp = gv.data_ptr<T>();
      T* gap = adaptive ? ga.data_ptr<T>() : nullptr;
      at::parallel_for(0, batch * n, kGrainElements, [&](int64_t i0, int64_t i1) {
        core::neuron_backward<T, D>(gz, gvin, gain, zb, dp, n, i0, i1, scalars, gvp, gap);
      });
    });
  });
  return {gv, ga};
}

}  // namespace

// A fragment: spike_matmul.cpp owns the namespace's TORCH_LIBRARY block, and
// one extension may declare a namespace only once.
TORCH_LIBRARY_FRAGMENT(ipu_snn_cpu, m) {
  m.def("neuron_fwd(Tensor current, Tensor v, Tensor? a, Tensor beta, Tensor? rho, "
        "Dict(str, float) params, ScalarType saved_dtype, Tensor? threshold=None) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("neuron_bwd(Tensor grad_z, Tensor grad_v, Tensor? grad_a, Tensor zbits, "
        "Tensor d, Dict(str, float) params) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipu_snn_cpu, CPU, m) {
  m.impl("neuron_fwd", &neuron_fwd);
  m.impl("neuron_bwd", &neuron_bwd);
}
