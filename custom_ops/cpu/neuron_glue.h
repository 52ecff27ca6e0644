// Torch glue shared by the CPU neuron kernels (neuron_step.cpp, layer_window.cpp):
// argument checks, the integer codes of the neuron spec, and dispatch on the
// saved-derivative dtype. The arithmetic itself is in neuron_core.h.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "neuron_core.h"

namespace ipu_snn {
namespace cpu {

namespace core = ipu_snn::core;

// Elements per task: below this a thread's start-up costs more than the work.
inline constexpr int64_t kGrainElements = 1 << 14;

// The integer codes of ipu_snn/neuron/spec.py (RESET_CODES) and
// ipu_snn/neuron/surrogates.py (the table's `code`), which are the enums of
// neuron_core.h.
inline core::Reset parse_reset(int64_t reset) {
  TORCH_CHECK(reset == 0 || reset == 1, "neuron step: reset code must be 0 (subtract) or 1 (zero), got ",
              reset);
  return static_cast<core::Reset>(reset);
}

inline core::SurrogateKind parse_surrogate(int64_t code) {
  TORCH_CHECK(code >= 0 && code <= 3, "neuron step: unknown surrogate code ", code);
  return static_cast<core::SurrogateKind>(code);
}

inline void check_state(const at::Tensor& t, const char* name, const at::Tensor& like,
                 const char* op) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.sizes() == like.sizes(), op, ": ", name, " must have shape ",
              like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name,
              " must have the state dtype ", like.scalar_type(), ", got ",
              t.scalar_type());
}

inline void check_decay(const at::Tensor& t, const char* name, const at::Tensor& like,
                 const char* op) {
  const int64_t n = like.size(1);
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == n, op, ": ", name,
              " must be a CPU vector of N = ", n, " per-neuron values, got ",
              t.sizes(), " on ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name,
              " must have the state dtype ", like.scalar_type(), ", got ",
              t.scalar_type());
}

inline void check_step_matrix(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.dim() == 2 && t.device().is_cpu(), op, ": ", name,
              " must be a CPU matrix [B, N], got ", t.sizes(), " on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the state dtype (", name, ") must be float32 or float64, got ",
              t.scalar_type());
}

inline void check_saved_dtype(at::ScalarType saved, at::ScalarType state, const char* op) {
  const bool ok = saved == at::kFloat || saved == at::kHalf || saved == at::kBFloat16 ||
                  (saved == at::kDouble && state == at::kDouble);
  TORCH_CHECK(ok, op, ": the surrogate derivative is saved as float32, float16 or ",
              "bfloat16 (or float64 with float64 state); got ", saved, " with ",
              state, " state");
}

// Calls body(D{}) with D the C++ type of the saved-derivative dtype.
template <typename F>
void dispatch_saved(at::ScalarType saved, F body) {
  switch (saved) {
    case at::kFloat: body(float{}); break;
    case at::kDouble: body(double{}); break;
    case at::kHalf: body(at::Half{}); break;
    case at::kBFloat16: body(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "neuron step: unsupported saved dtype ", saved);
  }
}

}  // namespace cpu
}  // namespace ipu_snn
