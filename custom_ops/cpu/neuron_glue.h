// Torch glue shared by the CPU neuron kernels (neuron_step.cpp, layer_window.cpp):
// argument checks, the one parameter struct read by field name, and dispatch
// on the saved-derivative dtype. The arithmetic itself is in neuron_core.h.
#pragma once

#include <ATen/ATen.h>

#include <ATen/core/Dict.h>

#include <cstdint>
#include <string>

#include "neuron_core.h"

namespace ipu_snn {
namespace cpu {

namespace core = ipu_snn::core;

// Elements per task: below this a thread's start-up costs more than the work.
inline constexpr int64_t kGrainElements = 1 << 14;

// The ops take their scalars as ONE parameter struct, which Python hands over as a dict from field
// name to value (ipu_snn/neuron/params.py builds it): a field is found by its name, never by its
// position, and a missing or unknown field is an error. Integer codes are those of neuron_core.h's
// enums (Reset, SurrogateKind, NeuronKind) and of ProductMode below.
using ParamDict = c10::Dict<std::string, double>;

// How a product of spikes with weights runs (ipu_snn/neuron/params.py PRODUCT_MODES, by name):
// always dense, always a gather over the spike list (at most `capacity` spikes per sample; the rest
// are dropped and counted), or sparse only where the step's spikes fit the capacity and are at most
// max_density dense.
enum class ProductMode : int32_t { kDense = 0, kSparse = 1, kAuto = 2 };
constexpr int32_t kProductModes = 3;

class ParamReader {
 public:
  ParamReader(const ParamDict& params, const char* op) : params_(params), op_(op) {}

  double real(const char* key) {
    const auto it = params_.find(key);
    TORCH_CHECK(it != params_.end(), op_, ": the parameters have no field '", key, "'");
    ++used_;
    return it->value();
  }
  int64_t code(const char* key, int64_t count) {
    const double value = real(key);
    const auto code = static_cast<int64_t>(value);
    TORCH_CHECK(double(code) == value && code >= 0 && code < count, op_, ": parameter '", key,
                "' must be an integer code in [0, ", count, "), got ", value);
    return code;
  }
  bool flag(const char* key) { return code(key, 2) == 1; }
  int64_t count(const char* key) { return code(key, int64_t(1) << 31); }
  // Every field given was read: an unknown one is a caller's mistake (a misspelt name), not a default.
  void done() const {
    if (used_ == static_cast<int64_t>(params_.size())) return;
    std::string given;
    for (const auto& kv : params_) given += (given.empty() ? "" : ", ") + kv.key();
    TORCH_CHECK(false, op_, ": the parameters have fields this op does not take (given: ", given, ")");
  }

 private:
  const ParamDict& params_;
  const char* op_;
  int64_t used_ = 0;
};

// The neuron's fields: kernel, threshold, adapt_strength, reset, surrogate, scale.
inline core::NeuronScalars read_neuron(ParamReader& r) {
  core::NeuronScalars s{};
  s.kind = static_cast<core::NeuronKind>(r.code("kernel", core::kNeuronKinds));
  s.threshold = r.real("threshold");
  s.adapt_strength = r.real("adapt_strength");
  s.reset = static_cast<core::Reset>(r.code("reset", 2));
  s.surrogate = static_cast<core::SurrogateKind>(r.code("surrogate", core::kSurrogateKinds));
  s.scale = r.real("scale");
  return s;
}

inline bool adaptive(const core::NeuronScalars& s) { return core::has_second_state(s.kind); }

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
