// The time loop of one spiking layer over a window of L steps, on the CPU.
//
// ipu_snn/neuron/window.py defines what a window computes (forward: the
// recurrent product and the fused neuron update per step, spikes kept as bits
// and surrogate derivatives as d; backward: the reverse walk with the state
// adjoints). Its generic implementation calls one kernel per step from Python;
// these two ops run the same walk in one C++ call each, so no Python runs per
// time step. The element-wise arithmetic is neuron_core.h's and the sparse
// arithmetic spike_core.h's, the headers the Poplar vertices share; dense
// products go to ATen (at::addmm / at::mm).
//
// The recurrent product z_{t-1} @ w_rec is dense or a gather-add over the
// spike list of z_{t-1}, per step, as the parameter `recurrent_product` (a
// ProductMode, neuron_glue.h) says: always dense, always sparse (at most
// `capacity` spikes per sample; the rest are dropped and counted), or auto:
// sparse where the step's spikes fit the capacity and their density is at
// most max_density (the crossover measured on this machine,
// ipu_snn/ops/policy.py), else dense. Both give the same sums up to rounding.
//
// Each op takes its scalars as one parameter struct (a dict by field name,
// read in read_window_fwd / read_window_bwd; ipu_snn/neuron/params.py builds it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "neuron_core.h"
#include "neuron_glue.h"
#include "spike_core.h"

namespace {

using namespace ipu_snn::cpu;
using at::Tensor;

// window_fwd's parameters: the neuron's, then the window's.
struct WindowForwardParams {
  core::NeuronScalars neuron;
  bool keep_d, keep_v, keep_a;  // what backward reads: d at all, the pre-step v and a (learned decays)
  ProductMode recurrent_product;
  int64_t capacity;    // spikes per sample in a sparse recurrent product
  double max_density;  // auto: the largest density that runs sparse
  double near_min_d;   // < 0: no near-threshold bits
};

WindowForwardParams read_window_fwd(const ParamDict& params, const char* op) {
  ParamReader r(params, op);
  WindowForwardParams p;
  p.neuron = read_neuron(r);
  p.keep_d = r.flag("keep_d");
  p.keep_v = r.flag("keep_v");
  p.keep_a = r.flag("keep_a");
  p.recurrent_product = static_cast<ProductMode>(r.code("recurrent_product", kProductModes));
  p.capacity = r.count("capacity");
  p.max_density = r.real("max_density");
  p.near_min_d = r.real("near_min_d");
  r.done();
  return p;
}

// window_bwd's parameters: the neuron's, then the window's.
struct WindowBackwardParams {
  core::NeuronScalars neuron;
  bool keep_ga;      // keep ga per step (a learned rho)
  bool keep_gv;      // keep gv per step (a learned beta of a model whose current enters its second state)
  bool listed_grad;  // the recurrent input gradient over the spike (and near) lists
  int64_t capacity;  // list length of the listed backward
};

WindowBackwardParams read_window_bwd(const ParamDict& params, const char* op) {
  ParamReader r(params, op);
  WindowBackwardParams p;
  p.neuron = read_neuron(r);
  p.keep_ga = r.flag("keep_ga");
  p.keep_gv = r.flag("keep_gv");
  p.listed_grad = r.flag("listed_grad");
  p.capacity = r.count("capacity");
  r.done();
  return p;
}

// A step's rows go to threads only when a task gets at least this many neurons:
// a time step is small, and a parallel region per step costs a thread wake-up
// each (and, on a loaded machine, a wait for a descheduled thread).
constexpr int64_t kStepGrainElements = int64_t(1) << 15;

int64_t grain_rows(int64_t n) { return std::max<int64_t>(1, kStepGrainElements / std::max<int64_t>(n, 1)); }

Tensor step(const Tensor& t, int64_t index) { return t.select(0, index); }

template <typename D>
bool nonzero(D value) {
  return static_cast<float>(value) != 0.0f;
}

// The near-threshold neurons of one row as bits: not fired, and a stored
// surrogate derivative above near_min_d (ipu_snn/neuron/window.py). Only those
// and the spikes can pass a gradient to z (gx = gz * d), so listing them makes
// the sparse backward exact when near_min_d is 0.
template <typename T, typename D>
void pack_near_row(const T* z, const D* d, int64_t n, double near_min_d, uint8_t* bits) {
  const int64_t n_bytes = core::packed_row_bytes(n);
  for (int64_t k = 0; k < n_bytes; ++k) {
    uint32_t byte = 0;
    const int64_t first = 8 * k, count = std::min<int64_t>(8, n - first);
    for (int64_t b = 0; b < count; ++b) {
      const int64_t j = first + b;
      const bool near = z[j] == T(0) && nonzero(d[j]) && static_cast<double>(d[j]) > near_min_d;
      byte |= uint32_t(near) << b;
    }
    bits[k] = static_cast<uint8_t>(byte);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
window_fwd(
    const Tensor& currents_in, const Tensor& v0_in, const c10::optional<Tensor>& a0_in,
    const c10::optional<Tensor>& z0_in, const c10::optional<Tensor>& w_rec_in,
    const Tensor& beta_in, const c10::optional<Tensor>& rho_in, const ParamDict& params,
    at::ScalarType saved_dtype, const c10::optional<Tensor>& threshold_in) {
  const char* op = "window_fwd";
  const WindowForwardParams p = read_window_fwd(params, op);
  const core::NeuronScalars& scalars = p.neuron;
  const ProductMode rec_mode = p.recurrent_product;
  const int64_t capacity = p.capacity;
  const double max_density = p.max_density, near_min_d = p.near_min_d;
  bool keep_d = p.keep_d, keep_v = p.keep_v, keep_a = p.keep_a;
  TORCH_CHECK(currents_in.dim() == 3 && currents_in.device().is_cpu(), op,
              ": currents must be a CPU tensor [L, B, N], got ", currents_in.sizes());
  const int64_t steps = currents_in.size(0), batch = currents_in.size(1),
                n = currents_in.size(2);
  const Tensor like = currents_in.select(0, 0);
  check_step_matrix(like, "currents", op);
  check_state(v0_in, "v0", like, op);
  check_decay(beta_in, "beta", like, op);
  const bool adaptive = ipu_snn::cpu::adaptive(scalars);
  TORCH_CHECK(adaptive == a0_in.has_value() && adaptive == rho_in.has_value(), op,
              ": ALIF needs both a0 and rho, LIF neither");
  if (adaptive) {
    check_state(*a0_in, "a0", like, op);
    check_decay(*rho_in, "rho", like, op);
  }
  if (threshold_in.has_value()) check_decay(*threshold_in, "threshold", like, op);  // [N], like a decay
  const bool recurrent = w_rec_in.has_value();
  TORCH_CHECK(!recurrent || (z0_in.has_value() && w_rec_in->dim() == 2 &&
                             w_rec_in->size(0) == n && w_rec_in->size(1) == n &&
                             w_rec_in->scalar_type() == like.scalar_type()),
              op, ": a recurrent window needs z0 [B, N] and w_rec [N, N] in the state dtype");
  if (recurrent) check_state(*z0_in, "z0", like, op);
  TORCH_CHECK(!recurrent || rec_mode == ProductMode::kDense || capacity >= 1, op,
              ": a sparse recurrent product needs a capacity >= 1");
  check_saved_dtype(saved_dtype, like.scalar_type(), op);
  keep_a = keep_a && adaptive && keep_d;
  keep_v = keep_v && keep_d;
  const bool sparse_rec = recurrent && rec_mode != ProductMode::kDense;
  const bool near = near_min_d >= 0.0;

  const auto currents = currents_in.contiguous();
  const auto beta = beta_in.contiguous();
  const auto rho = adaptive ? rho_in->contiguous() : Tensor();
  // one threshold per neuron: the learned one, else the scalar repeated (one kernel variant to compile)
  const auto thresholds = threshold_in.has_value() ? threshold_in->contiguous()
                                                   : at::full({n}, scalars.threshold, currents_in.options());
  const auto w_rec = recurrent ? w_rec_in->contiguous() : Tensor();
  const int64_t row_bytes = core::packed_row_bytes(n);
  const auto opts = currents.options();
  auto z = at::empty({steps, batch, n}, opts);
  auto bits = at::empty({steps, batch, row_bytes}, opts.dtype(at::kByte));
  // Without keep_d (a forward that backward will not read: inference, or a
  // schedule's forward sweep) every step writes the same slot of d.
  auto d = at::empty({keep_d ? steps : 1, batch, n}, opts.dtype(saved_dtype));
  auto v_prev = keep_v ? at::empty({steps, batch, n}, opts.dtype(saved_dtype)) : at::empty({0}, opts);
  auto a_prev = keep_a ? at::empty({steps, batch, n}, opts.dtype(saved_dtype)) : at::empty({0}, opts);
  auto near_bits = near ? at::empty({steps, batch, row_bytes}, opts.dtype(at::kByte))
                        : at::empty({0}, opts.dtype(at::kByte));
  // Two state buffers each, swapped every step: an update never reads what it writes.
  Tensor v = v0_in.contiguous().clone(), v_next = at::empty_like(v);
  Tensor a = adaptive ? a0_in->contiguous().clone() : Tensor();
  Tensor a_next = adaptive ? at::empty_like(a) : Tensor();
  Tensor cur = at::empty({batch, n}, opts);
  // c10::Half converts one value at a time, which the compiler does not
  // vectorise: d is computed in float and converted in one copy per step.
  const bool via_float = saved_dtype == at::kHalf;
  Tensor d_step = via_float ? at::empty({batch, n}, opts.dtype(at::kFloat)) : Tensor();
  const int64_t k_cap = sparse_rec ? capacity : 0;
  std::vector<int32_t> ids_prev(batch * k_cap), ids_cur(batch * k_cap);
  std::vector<int32_t> count_prev(batch, 0), count_cur(batch, 0);
  auto dropped = at::zeros({batch}, opts.dtype(at::kLong));  // per sample (rec_mode 1)
  int64_t* dropped_p = dropped.data_ptr<int64_t>();
  int64_t sparse_steps = 0;
  if (steps == 0 || batch == 0 || n == 0) {
    return {z, bits, d, v_prev, a_prev, near_bits, v, adaptive ? a : at::empty({0}, opts),
            dropped, at::zeros({1}, opts.dtype(at::kLong))};
  }

  AT_DISPATCH_FLOATING_TYPES(currents.scalar_type(), "ipu_snn_cpu_window_fwd", [&] {
    using T = scalar_t;
    const auto z0 = recurrent ? z0_in->contiguous() : Tensor();
    if (sparse_rec) {  // the spike list of z0 feeds step 0's product
      const T* zp = z0.data_ptr<T>();
      for (int64_t b = 0; b < batch; ++b) {
        const auto c = core::compact_row<T, bool>(zp + b * n, nullptr, n,
                                                  static_cast<int32_t>(k_cap), &ids_prev[b * k_cap]);
        count_prev[b] = c.spikes + c.dropped;
      }
    }
    const T* w = recurrent ? w_rec.data_ptr<T>() : nullptr;
    const T* bp = beta.data_ptr<T>();
    const T* rp = adaptive ? rho.data_ptr<T>() : nullptr;
    const T* thp = thresholds.data_ptr<T>();
    // Raw pointers per step: a Tensor select and an ATen copy per step cost
    // more than the step's own arithmetic at a few hundred neurons.
    const int64_t plane = batch * n, bits_plane = batch * row_bytes;
    const T* currents_p = currents.data_ptr<T>();
    T* z_p = z.data_ptr<T>();
    uint8_t* bits_p = bits.data_ptr<uint8_t>();
    uint8_t* near_p = near ? near_bits.data_ptr<uint8_t>() : nullptr;
    // v_prev / a_prev are written in the row loop when they share d's dtype
    // (every case but half, whose d goes through float)
    const bool keep_state_inline = !via_float;
    for (int64_t t = 0; t < steps; ++t) {
      const T* input = currents_p + t * plane;
      bool gather = false;
      if (recurrent) {
        if (rec_mode == ProductMode::kSparse) {
          gather = true;
        } else if (rec_mode == ProductMode::kAuto) {
          int64_t total = 0, most = 0;
          for (int64_t b = 0; b < batch; ++b) {
            total += count_prev[b];
            most = std::max<int64_t>(most, count_prev[b]);
          }
          gather = most <= k_cap && double(total) <= max_density * double(batch * n);
        }
        if (gather) {
          if (rec_mode == ProductMode::kSparse) {
            for (int64_t b = 0; b < batch; ++b) dropped_p[b] += std::max<int64_t>(0, count_prev[b] - k_cap);
          }
          ++sparse_steps;
        } else {
          at::addmm_out(cur, step(currents, t), t == 0 ? z0 : step(z, t - 1), w_rec);
          input = cur.data_ptr<T>();
        }
      }
      if (!keep_state_inline) {
        if (keep_v) step(v_prev, t).copy_(v);
        if (keep_a) step(a_prev, t).copy_(a);
      }
      T* cp = cur.data_ptr<T>();
      const T* vp = v.data_ptr<T>();
      const T* ap = adaptive ? a.data_ptr<T>() : nullptr;
      T* vn = v_next.data_ptr<T>();
      T* an = adaptive ? a_next.data_ptr<T>() : nullptr;
      T* zt = z_p + t * plane;
      uint8_t* bt = bits_p + t * bits_plane;
      uint8_t* nt = near ? near_p + t * bits_plane : nullptr;
      dispatch_saved(via_float ? at::kFloat : saved_dtype, [&](auto tag) {
        using D = decltype(tag);
        // d_step holds one step (converted below); d one slot per step under keep_d
        D* dt = via_float ? static_cast<D*>(d_step.data_ptr())
                          : static_cast<D*>(d.data_ptr()) + (keep_d ? t * plane : 0);
        D* vk = keep_state_inline && keep_v ? static_cast<D*>(v_prev.data_ptr()) + t * plane : nullptr;
        D* ak = keep_state_inline && keep_a ? static_cast<D*>(a_prev.data_ptr()) + t * plane : nullptr;
        at::parallel_for(0, batch, grain_rows(n), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = b * n;
            if (vk != nullptr) for (int64_t j = row; j < row + n; ++j) vk[j] = D(vp[j]);
            if (ak != nullptr) for (int64_t j = row; j < row + n; ++j) ak[j] = D(ap[j]);
            const T* in = input;
            if (gather) {  // current row = input row + the gathered weight rows of z_{t-1}
              std::copy(input + row, input + row + n, cp + row);
              core::gather_add_row<T, T>(w, n, &ids_prev[b * k_cap],
                                         std::min<int32_t>(count_prev[b], int32_t(k_cap)), cp + row);
              in = cp;
            }
            core::neuron_forward<T, D>(in, vp, ap, bp, rp, n, row, row + n, scalars, vn, an, zt, dt,
                                       thp);
            core::pack_bits<T>(zt + row, n, 0, row_bytes, bt + b * row_bytes);
            if (near) pack_near_row<T, D>(zt + row, dt + row, n, near_min_d, nt + b * row_bytes);
            if (sparse_rec) {
              const auto c = core::compact_bits_row(bt + b * row_bytes, nullptr, n,
                                                    static_cast<int32_t>(k_cap), &ids_cur[b * k_cap]);
              count_cur[b] = c.spikes + c.dropped;
            }
          }
        });
      });
      if (via_float) step(d, keep_d ? t : 0).copy_(d_step);
      std::swap(v, v_next);
      if (adaptive) std::swap(a, a_next);
      std::swap(ids_prev, ids_cur);
      std::swap(count_prev, count_cur);
    }
  });
  return {z, bits, d, v_prev, a_prev, near_bits, v, adaptive ? a : at::empty({0}, opts),
          dropped, at::full({1}, sparse_steps, opts.dtype(at::kLong))};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> window_bwd(
    const c10::optional<Tensor>& grad_z_in, const c10::optional<Tensor>& grad_z_last_in,
    const Tensor& grad_v_in,
    const c10::optional<Tensor>& grad_a_in, const Tensor& bits_in, const Tensor& d_in,
    const c10::optional<Tensor>& z0_bits_in, const c10::optional<Tensor>& near_in,
    const c10::optional<Tensor>& near0_in, const c10::optional<Tensor>& w_rec_in,
    const Tensor& beta_in, const c10::optional<Tensor>& rho_in, const ParamDict& params) {
  const char* op = "window_bwd";
  const WindowBackwardParams p = read_window_bwd(params, op);
  const int64_t capacity = p.capacity;
  bool keep_ga = p.keep_ga;
  TORCH_CHECK(d_in.dim() == 3 && d_in.device().is_cpu(), op, ": d must be a CPU tensor [L, B, N]");
  const int64_t steps = d_in.size(0), batch = d_in.size(1), n = d_in.size(2);
  check_step_matrix(grad_v_in, "grad_v", op);
  TORCH_CHECK(grad_v_in.size(0) == batch && grad_v_in.size(1) == n, op,
              ": grad_v must be [B, N] = [", batch, ", ", n, "]");
  const auto like = grad_v_in;
  check_saved_dtype(d_in.scalar_type(), like.scalar_type(), op);
  check_decay(beta_in, "beta", like, op);
  const bool adaptive = ipu_snn::cpu::adaptive(p.neuron);
  TORCH_CHECK(adaptive == rho_in.has_value(), op, ": ALIF needs rho, LIF none");
  if (adaptive) check_decay(*rho_in, "rho", like, op);
  if (grad_a_in.has_value()) {
    TORCH_CHECK(adaptive, op, ": grad_a was given for a LIF layer");
    check_state(*grad_a_in, "grad_a", like, op);
  }
  const int64_t row_bytes = core::packed_row_bytes(n);
  TORCH_CHECK(bits_in.scalar_type() == at::kByte && bits_in.dim() == 3 &&
                  bits_in.size(0) == steps && bits_in.size(1) == batch &&
                  bits_in.size(2) == row_bytes,
              op, ": bits must be uint8 [L, B, ceil(N / 8)]");
  const bool recurrent = w_rec_in.has_value();
  const bool listed = recurrent && p.listed_grad;
  TORCH_CHECK(!recurrent || z0_bits_in.has_value(), op, ": a recurrent window needs z0's bits");
  TORCH_CHECK(!listed || capacity >= 1, op, ": the listed backward needs a capacity >= 1");
  const bool near = near_in.has_value();
  TORCH_CHECK(!near || near0_in.has_value(), op, ": near-threshold bits need near0 as well");
  keep_ga = keep_ga && adaptive;

  const auto grad_z = grad_z_in.has_value() ? grad_z_in->contiguous() : Tensor();
  // d loss / d z at the window's last step through the state it hands on (the
  // next window's recurrent product); added here, not into a copy of grad_z
  const auto grad_z_last = grad_z_last_in.has_value() ? grad_z_last_in->contiguous() : Tensor();
  if (grad_z_last.defined()) check_state(grad_z_last, "grad_z_last", like, op);
  const auto bits = bits_in.contiguous();
  const auto d = d_in.contiguous();
  const auto beta = beta_in.contiguous();
  const auto rho = adaptive ? rho_in->contiguous() : Tensor();
  const auto w_rec = recurrent ? w_rec_in->contiguous() : Tensor();
  const auto z0_bits = recurrent ? z0_bits_in->contiguous() : Tensor();
  const auto near_bits = near ? near_in->contiguous() : Tensor();
  const auto near0 = near ? near0_in->contiguous() : Tensor();
  const auto opts = like.options();
  auto grad_currents = at::empty({steps, batch, n}, opts);
  auto ga_all = keep_ga ? at::empty({steps, batch, n}, opts) : at::empty({0}, opts);
  // CUBA: the input current enters the synaptic current a, so the kernel's ga is the current's
  // gradient (written to grad_currents) and its gv, w.r.t. v, goes to gv_all (a learned beta) or scratch
  const bool into_a = p.neuron.kind == core::NeuronKind::kCuba;
  const bool keep_gv = p.keep_gv && into_a;
  auto gv_all = keep_gv ? at::empty({steps, batch, n}, opts) : at::empty({0}, opts);
  Tensor gv_scratch = into_a && !keep_gv ? at::empty({batch, n}, opts) : Tensor();
  Tensor grad_v = grad_v_in.contiguous().clone();
  Tensor grad_a = adaptive ? (grad_a_in.has_value() ? grad_a_in->contiguous().clone()
                                                    : at::zeros({batch, n}, opts))
                           : Tensor();
  Tensor rec = recurrent ? at::zeros({batch, n}, opts) : Tensor();  // d loss / d z_{t-1} via w_rec
  Tensor gz = at::empty({batch, n}, opts);
  if (steps == 0 || batch == 0 || n == 0) {
    return {grad_currents, ga_all, gv_all, grad_v, adaptive ? grad_a : at::empty({0}, opts),
            recurrent ? rec : at::empty({0}, opts)};
  }

  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "ipu_snn_cpu_window_bwd", [&] {
    using T = scalar_t;
    const T* w = recurrent ? w_rec.data_ptr<T>() : nullptr;
    // grad_currents_t @ w_rec^T per step reads w_rec^T row-major: transposed
    // once here, the per-step product is a plain GEMM (a quarter faster).
    const Tensor w_rec_t = recurrent && !listed ? w_rec.t().contiguous() : Tensor();
    std::vector<int32_t> ids(listed ? batch * capacity : 0);
    const int64_t plane = batch * n, bits_plane = batch * row_bytes;
    const T* grad_z_p = grad_z.defined() ? grad_z.data_ptr<T>() : nullptr;
    const T* grad_z_last_p = grad_z_last.defined() ? grad_z_last.data_ptr<T>() : nullptr;
    const uint8_t* bits_p = bits.data_ptr<uint8_t>();
    T* grad_currents_p = grad_currents.data_ptr<T>();
    T* rec_p = recurrent ? rec.data_ptr<T>() : nullptr;
    T* gzp = gz.data_ptr<T>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const Tensor d_t = d.scalar_type() == at::kHalf ? step(d, t).to(at::kFloat) : step(d, t);
      T* gc = grad_currents_p + t * plane;
      // ga is kept only for a learned rho (grad_rho = sum ga * a_prev); the leak's
      // epilogue below carries rho * ga to the previous step either way
      T* ga = keep_ga ? step(ga_all, t).data_ptr<T>() : nullptr;
      T* gv_out = gc;
      if (into_a) {  // the kernel's (gv, ga) are (w.r.t. v, the current's)
        gv_out = keep_gv ? step(gv_all, t).data_ptr<T>() : gv_scratch.data_ptr<T>();
        ga = gc;
      }
      core::LeakBackward<T> leak;
      leak.beta = beta.data_ptr<T>();
      leak.rho = adaptive ? rho.data_ptr<T>() : nullptr;
      leak.grad_v_prev = grad_v.data_ptr<T>();
      leak.grad_a_prev = adaptive ? grad_a.data_ptr<T>() : nullptr;
      const T* gvp = grad_v.data_ptr<T>();
      const T* gap = adaptive ? grad_a.data_ptr<T>() : nullptr;
      const uint8_t* bt = bits_p + t * bits_plane;
      const T* gz_t = grad_z_p != nullptr ? grad_z_p + t * plane : nullptr;
      const T* gz_last = t == steps - 1 ? grad_z_last_p : nullptr;
      dispatch_saved(d_t.scalar_type(), [&](auto tag) {
        using D = decltype(tag);
        const D* dp = static_cast<const D*>(d_t.data_ptr());
        at::parallel_for(0, batch, grain_rows(n), [&](int64_t b0, int64_t b1) {
          // d loss / d z_t: from the consumers (grad_z) and from step t + 1's recurrent product
          for (int64_t i = b0 * n; i < b1 * n; ++i) {
            gzp[i] = (gz_t != nullptr ? gz_t[i] : T(0)) + (rec_p != nullptr ? rec_p[i] : T(0)) +
                     (gz_last != nullptr ? gz_last[i] : T(0));
          }
          core::neuron_backward<T, D>(gzp, gvp, gap, bt, dp, n, b0 * n, b1 * n, p.neuron, gv_out, ga, leak);
        });
      });
      if (!recurrent) continue;
      // the gradient reaching z_{t-1} through this step's recurrent product
      if (!listed) {
        at::mm_out(rec, step(grad_currents, t), w_rec_t);
        continue;
      }
      const uint8_t* prev = t == 0 ? z0_bits.data_ptr<uint8_t>() : step(bits, t - 1).data_ptr<uint8_t>();
      const uint8_t* prev_near =
          !near ? nullptr : (t == 0 ? near0.data_ptr<uint8_t>() : step(near_bits, t - 1).data_ptr<uint8_t>());
      at::parallel_for(0, batch, grain_rows(n), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          int32_t* row_ids = &ids[b * capacity];
          const auto c = core::compact_bits_row(prev + b * row_bytes,
                                                prev_near ? prev_near + b * row_bytes : nullptr, n,
                                                static_cast<int32_t>(capacity), row_ids);
          core::listed_grad_row<T, T>(w, n, gc + b * n, row_ids, c.spikes + c.near, n, rec_p + b * n);
        }
      });
    }
  });
  return {grad_currents, ga_all, gv_all, grad_v, adaptive ? grad_a : at::empty({0}, opts),
          recurrent ? rec : at::empty({0}, opts)};
}

// The leaky-integrator readout over a window, v_t = beta * v_{t-1} + I_t
// (ipu_snn/neuron/window.py leaky_integrate): its trace [L, B, C]. A few
// dozen classes per step make the per-step cost all overhead in Python.
Tensor leaky_fwd(const Tensor& currents_in, const Tensor& beta_in, const Tensor& v0_in) {
  const char* op = "leaky_fwd";
  TORCH_CHECK(currents_in.dim() == 3 && currents_in.device().is_cpu(), op,
              ": currents must be a CPU tensor [L, B, C], got ", currents_in.sizes());
  const auto like = currents_in.select(0, 0);
  check_state(v0_in, "v0", like, op);
  check_decay(beta_in, "beta", like, op);
  const auto currents = currents_in.contiguous();
  const auto beta = beta_in.contiguous();
  const auto v0 = v0_in.contiguous();
  auto trace = at::empty_like(currents);
  const int64_t steps = currents.size(0), batch = currents.size(1), c = currents.size(2);
  AT_DISPATCH_FLOATING_TYPES(currents.scalar_type(), "ipu_snn_cpu_leaky_fwd", [&] {
    const scalar_t* in = currents.data_ptr<scalar_t>();
    const scalar_t* b = beta.data_ptr<scalar_t>();
    scalar_t* out = trace.data_ptr<scalar_t>();
    const scalar_t* prev = v0.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t) {
      scalar_t* now = out + t * batch * c;
      const scalar_t* cur = in + t * batch * c;
      for (int64_t r = 0; r < batch * c; r += c) {
        for (int64_t j = 0; j < c; ++j) now[r + j] = b[j] * prev[r + j] + cur[r + j];
      }
      prev = now;
    }
  });
  return trace;
}

// Its backward: (d loss / d currents [L, B, C], d loss / d v0 [B, C]) from the
// trace's gradient and the last v's (either may be absent).
std::tuple<Tensor, Tensor> leaky_bwd(const c10::optional<Tensor>& grad_trace_in,
                                     const c10::optional<Tensor>& grad_last_in, const Tensor& beta_in,
                                     int64_t steps) {
  const char* op = "leaky_bwd";
  TORCH_CHECK(grad_trace_in.has_value() || grad_last_in.has_value(), op, ": needs a gradient");
  const Tensor like = grad_trace_in.has_value() ? grad_trace_in->select(0, 0) : *grad_last_in;
  check_step_matrix(like, "grad", op);
  check_decay(beta_in, "beta", like, op);
  if (grad_last_in.has_value()) check_state(*grad_last_in, "grad_last", like, op);
  TORCH_CHECK(!grad_trace_in.has_value() || grad_trace_in->size(0) == steps, op, ": grad_trace must have ",
              steps, " steps");
  const int64_t batch = like.size(0), c = like.size(1);
  const auto grad_trace = grad_trace_in.has_value() ? grad_trace_in->contiguous() : Tensor();
  const auto grad_last = grad_last_in.has_value() ? grad_last_in->contiguous() : Tensor();
  const auto beta = beta_in.contiguous();
  auto grad_currents = at::empty({steps, batch, c}, like.options());
  auto grad_v0 = at::empty({batch, c}, like.options());
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "ipu_snn_cpu_leaky_bwd", [&] {
    const scalar_t* gt = grad_trace.defined() ? grad_trace.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gl = grad_last.defined() ? grad_last.data_ptr<scalar_t>() : nullptr;
    const scalar_t* b = beta.data_ptr<scalar_t>();
    scalar_t* out = grad_currents.data_ptr<scalar_t>();
    const int64_t plane = batch * c;
    // g_t = d loss / d v_t = grad_trace_t + beta * g_{t+1}; the last v is v_{L-1}
    const scalar_t* next = nullptr;
    for (int64_t t = steps - 1; t >= 0; --t) {
      scalar_t* now = out + t * plane;
      const scalar_t* g_t = gt != nullptr ? gt + t * plane : nullptr;
      const scalar_t* g_last = t == steps - 1 ? gl : nullptr;
      for (int64_t r = 0; r < plane; r += c) {
        for (int64_t j = 0; j < c; ++j) {
          const int64_t i = r + j;
          now[i] = (g_t != nullptr ? g_t[i] : scalar_t(0)) + (next != nullptr ? b[j] * next[i] : scalar_t(0)) +
                   (g_last != nullptr ? g_last[i] : scalar_t(0));
        }
      }
      next = now;
    }
    scalar_t* g0 = grad_v0.data_ptr<scalar_t>();
    for (int64_t r = 0; r < plane; r += c) {
      for (int64_t j = 0; j < c; ++j) g0[r + j] = next != nullptr ? b[j] * next[r + j] : scalar_t(0);
    }
  });
  return {grad_currents, grad_v0};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ipu_snn_cpu, m) {
  m.def("window_fwd(Tensor currents, Tensor v0, Tensor? a0, Tensor? z0, Tensor? w_rec, "
        "Tensor beta, Tensor? rho, Dict(str, float) params, ScalarType saved_dtype, "
        "Tensor? threshold=None) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("window_bwd(Tensor? grad_z, Tensor? grad_z_last, Tensor grad_v, Tensor? grad_a, Tensor bits, Tensor d, "
        "Tensor? z0_bits, Tensor? near, Tensor? near0, Tensor? w_rec, Tensor beta, Tensor? rho, "
        "Dict(str, float) params) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("leaky_fwd(Tensor currents, Tensor beta, Tensor v0) -> Tensor");
  m.def("leaky_bwd(Tensor? grad_trace, Tensor? grad_last, Tensor beta, int steps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipu_snn_cpu, CPU, m) {
  m.impl("leaky_fwd", &leaky_fwd);
  m.impl("leaky_bwd", &leaky_bwd);
  m.impl("window_fwd", &window_fwd);
  m.impl("window_bwd", &window_bwd);
}
