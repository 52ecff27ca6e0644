// Fused LIF/ALIF neuron step, shared by every compiled backend.
//
// The CPU torch extension (custom_ops/cpu/neuron_step.cpp) and the Poplar
// vertices include this header, so the arithmetic CI tests on CPU is the
// arithmetic an IPU tile runs. Like spike_core.h it has no torch or Poplar
// includes, no allocation and no threads: callers own the memory and split the
// work (element or byte ranges on CPU threads, on IPU tiles and workers).
//
// Contract: one time step of one layer, elementwise over a row-major [B, N]
// step flattened to i = b * N + j, with per-neuron decays beta[j], rho[j]
// (and, for a learned threshold, threshold[j] in place of the scalar):
//     v     = beta * v_prev + current
//     a     = rho * a_prev                       (ALIF only; LIF: a = 0)
//     theta = threshold + adapt_strength * a
//     x     = v - theta
//     z     = (x > 0)          d = sg'(x)         (surrogate derivative, below)
//     reset subtract: v_new = v - z * theta      reset zero: v_new = v * (1 - z)
//     a_new = a + z                               (ALIF only)
// The reset uses z as a constant (detached), as ipu_snn/neuron/spec.py says.
// Backward of fire-and-reset, given grad_z (w.r.t. z), grad_v (w.r.t. v_new)
// and grad_a (w.r.t. a_new, ALIF):
//     gz    = grad_z + grad_a
//     gx    = gz * d
//     gv    = grad_v * (1 if subtract else (1 - z)) + gx      (w.r.t. v; = grad_current)
//     ga    = grad_a - adapt_strength * (gx + (grad_v * z if subtract else 0))   (w.r.t. a)
// and, when asked (LeakBackward), the leak's: grad_v_prev = beta * gv,
// grad_a_prev = rho * ga. ipu_snn/neuron/spec.py states the same contract.
// This equals autograd through ipu_snn.neuron.reference.step with
// detach_reset=True (tests/unit/test_neuron_kernels.py checks it in float64). Only
// z and d are needed backward; z is kept as packed bits:
//     uint8 [B, ceil(N / 8)], byte = sum_k z[8 * i + k] << k within each row
// (little-endian bit order; a row's unused high bits are 0).
//
// Surrogate derivatives, the table of ipu_snn/neuron/surrogates.py (s = scale;
// the enum values below are that table's codes, checked by a test):
//     fast_sigmoid  1 / (s |x| + 1)^2
//     atan          (s / 2) / (1 + (pi / 2 * s * x)^2)
//     triangle      max(1 - s |x|, 0)
//     boxcar        1 if |x| < 0.5 / s else 0
//
// LIF or ALIF: in the forward, rho == nullptr is LIF (a_prev and a_new are
// then ignored and may be null); the backward takes an explicit flag, and
// grad_a may be null there for a zero gradient.
//
// Types: T is the state type (float, double, or a half type that converts to
// float); arithmetic runs in float, or in double when T is double. D is the
// type the surrogate derivative is saved in (e.g. half to save memory). I is
// the index type and S the type of the scalars (threshold, adapt_strength,
// scale): the CPU extension passes int64_t and double, an IPU vertex unsigned
// and float, because a tile's 32-bit cores run 64-bit division and double
// arithmetic in software. Each range function a tile runs divides once, to
// find the row its range starts in, and then walks whole rows.
#pragma once

#include <cstdint>

// Promises the compiler that a pointer is the only way to its data (GCC, Clang
// and popc spell it __restrict__).
#if defined(__GNUC__) || defined(__clang__)
#define IPU_SNN_RESTRICT __restrict__
#else
#define IPU_SNN_RESTRICT
#endif

namespace ipu_snn {
namespace core {

enum class Reset : int32_t { kSubtract = 0, kZero = 1 };

// The surrogate table's codes (ipu_snn/neuron/surrogates.py); kSurrogateKinds is one past the last.
enum class SurrogateKind : int32_t {
  kFastSigmoid = 0,
  kAtan = 1,
  kTriangle = 2,
  kBoxcar = 3,
};
constexpr int32_t kSurrogateKinds = 4;

// The neuron-model registry's kernel codes (ipu_snn/neuron/models: NeuronModel.kernel_code); models
// that differ in connectivity only share one (lif and rlif run kLif). kNeuronKinds is one past the last.
enum class NeuronKind : int32_t {
  kLif = 0,
  kAlif = 1,
  kCuba = 2,
};
constexpr int32_t kNeuronKinds = 3;

// Whether a kernel carries a second state (a, with its decay rho) besides v: the registry's
// NeuronModel.state has two entries.
inline bool has_second_state(NeuronKind kind) { return kind != NeuronKind::kLif; }

// The scalars of one layer's step, in S (double on the CPU, float on a tile).
template <typename S>
struct NeuronScalarsT {
  S threshold;
  S adapt_strength;  // ignored for LIF (a = 0)
  Reset reset;
  SurrogateKind surrogate;
  S scale;
  NeuronKind kind = NeuronKind::kLif;  // kAlif: a_prev, rho and a_new are read and written
};
using NeuronScalars = NeuronScalarsT<double>;

// Arithmetic type for a state type: float, except double for double.
template <typename T>
struct NeuronCompute { using type = float; };
template <>
struct NeuronCompute<double> { using type = double; };

template <typename I>
inline I packed_row_bytes(I n_neurons) { return (n_neurons + 7) / 8; }

// Keeps a parameter out of template deduction: a range's bounds take the index
// type of n_neurons, so that a literal bound needs no cast.
template <typename I>
struct NonDeduced { using type = I; };
template <typename I>
using non_deduced_t = typename NonDeduced<I>::type;

template <typename C>
inline C abs_value(C x) { return x < C(0) ? -x : x; }

// Surrogate derivatives. The constants are formed in the scale's type S: in
// double on the CPU, as Python forms them before torch casts them to the
// tensor dtype, so that float results round the same way as
// ipu_snn/neuron/surrogates.py; in float on a tile (atan's slope and boxcar's half width
// may then differ from the CPU's in the last bit).
template <typename C>
struct FastSigmoidGrad {
  C scale;
  template <typename S>
  explicit FastSigmoidGrad(S s) : scale(C(s)) {}
  C operator()(C x) const {
    const C denom = scale * abs_value(x) + C(1);
    return C(1) / (denom * denom);
  }
};

template <typename C>
struct AtanGrad {
  C half_scale, slope;
  template <typename S>
  explicit AtanGrad(S s)
      : half_scale(C(s / S(2))), slope(C(S(3.14159265358979323846) / S(2) * s)) {}
  C operator()(C x) const {
    const C u = slope * x;
    return half_scale / (C(1) + u * u);
  }
};

template <typename C>
struct TriangleGrad {
  C scale;
  template <typename S>
  explicit TriangleGrad(S s) : scale(C(s)) {}
  C operator()(C x) const {
    const C t = C(1) - scale * abs_value(x);
    return t > C(0) ? t : C(0);
  }
};

template <typename C>
struct BoxcarGrad {
  C half_width;
  template <typename S>
  explicit BoxcarGrad(S s) : half_width(C(S(0.5) / s)) {}
  C operator()(C x) const { return abs_value(x) < half_width ? C(1) : C(0); }
};

// Forward over neurons [j_begin, j_end) of the row that starts at flat index
// row_start. The reset, the neuron type and the surrogate are template
// parameters so that the loop body has no branches on them. The pointers are
// restrict (forward outputs never alias inputs): without that the compiler
// would need more run-time overlap checks than it is willing to emit, and the
// loop would not vectorise. Outputs are selects on `fired` rather than
// products with z, for the same reason: a product with a 0/1 value invites the
// compiler to branch, and a branch stops vectorisation. The results are the
// same numbers (v - 1 * theta is x, v - 0 * theta is v).
// kCuba (current-based LIF, NIR's CubaLIF): a is the synaptic current i and rho its decay alpha;
// the input current enters i, which enters v: i = alpha * i_prev + current, v = beta * v_prev + i,
// theta = threshold, a_new = i.
template <typename T, typename D, typename Grad, bool kSubtract, bool kAdaptive, bool kCuba,
          bool kPerNeuron, typename I, typename S>
void neuron_forward_row(const T* IPU_SNN_RESTRICT current, const T* IPU_SNN_RESTRICT v_prev,
                        const T* IPU_SNN_RESTRICT a_prev, const T* IPU_SNN_RESTRICT beta,
                        const T* IPU_SNN_RESTRICT rho, I row_start, I j_begin,
                        I j_end, S threshold, const T* IPU_SNN_RESTRICT thresholds,
                        S adapt_strength, const Grad& grad_in, T* IPU_SNN_RESTRICT v_new,
                        T* IPU_SNN_RESTRICT a_new, T* IPU_SNN_RESTRICT z,
                        D* IPU_SNN_RESTRICT d) {
  using C = typename NeuronCompute<T>::type;
  const C th = C(threshold), adapt = C(adapt_strength);
  const Grad grad = grad_in;  // a local copy keeps its constants in registers
  const T* cur = current + row_start;
  const T* vp = v_prev + row_start;
  const T* ap = (kAdaptive || kCuba) ? a_prev + row_start : nullptr;
  T* vn = v_new + row_start;
  T* an = (kAdaptive || kCuba) ? a_new + row_start : nullptr;
  T* zr = z + row_start;
  D* dr = d + row_start;
  for (I j = j_begin; j < j_end; ++j) {
    const C base = kPerNeuron ? C(thresholds[j]) : th;
    C a = C(0), theta = base;
    if (kCuba) a = C(rho[j]) * C(ap[j]) + C(cur[j]);
    const C v = C(beta[j]) * C(vp[j]) + (kCuba ? a : C(cur[j]));
    if (kAdaptive) {
      a = C(rho[j]) * C(ap[j]);
      theta = base + adapt * a;
    }
    const C x = v - theta;
    const bool fired = x > C(0);
    dr[j] = D(grad(x));
    zr[j] = T(fired ? C(1) : C(0));
    vn[j] = T(fired ? (kSubtract ? x : C(0)) : v);
    if (kAdaptive) {
      const C zc = fired ? C(1) : C(0);
      an[j] = T(a + zc);
    }
    if (kCuba) an[j] = T(a);
  }
}

// Splits [begin, end) into row segments so the inner loop runs over neuron
// indices: one division finds the first row, the rest are walked.
template <typename T, typename D, typename Grad, bool kSubtract, bool kAdaptive, bool kCuba,
          bool kPerNeuron, typename I, typename S>
void neuron_forward_range(const T* current, const T* v_prev, const T* a_prev,
                          const T* beta, const T* rho, I n_neurons,
                          I begin, I end, S threshold, const T* thresholds,
                          S adapt_strength, const Grad& grad, T* v_new,
                          T* a_new, T* z, D* d) {
  if (begin >= end) return;
  I row_start = (begin / n_neurons) * n_neurons;
  I j_begin = begin - row_start;
  while (row_start < end) {
    const I j_end = (end - row_start < n_neurons) ? end - row_start : n_neurons;
    neuron_forward_row<T, D, Grad, kSubtract, kAdaptive, kCuba, kPerNeuron>(
        current, v_prev, a_prev, beta, rho, row_start, j_begin, j_end, threshold, thresholds,
        adapt_strength, grad, v_new, a_new, z, d);
    row_start += n_neurons;
    j_begin = 0;
  }
}

template <bool kPerNeuron, typename T, typename D, typename Grad, typename I, typename S>
void neuron_forward_with(const T* current, const T* v_prev, const T* a_prev,
                         const T* beta, const T* rho, I n_neurons,
                         I begin, I end, const NeuronScalarsT<S>& s,
                         const Grad& grad, T* v_new, T* a_new, T* z, D* d,
                         const T* thresholds) {
#define IPU_SNN_NEURON_FORWARD(SUB, A, CUBA)                                                  \
  neuron_forward_range<T, D, Grad, SUB, A, CUBA, kPerNeuron>(current, v_prev, a_prev, beta, rho, \
                                                             n_neurons, begin, end, s.threshold,  \
                                                             thresholds,                          \
                                                             A ? s.adapt_strength : S(0), grad,   \
                                                             v_new, a_new, z, d)
  const bool subtract = s.reset == Reset::kSubtract;
  if (s.kind == NeuronKind::kCuba) {
    if (subtract) IPU_SNN_NEURON_FORWARD(true, false, true);
    else IPU_SNN_NEURON_FORWARD(false, false, true);
  } else if (rho != nullptr) {
    if (subtract) IPU_SNN_NEURON_FORWARD(true, true, false);
    else IPU_SNN_NEURON_FORWARD(false, true, false);
  } else {
    if (subtract) IPU_SNN_NEURON_FORWARD(true, false, false);
    else IPU_SNN_NEURON_FORWARD(false, false, false);
  }
#undef IPU_SNN_NEURON_FORWARD
}

template <bool kPerNeuron, typename T, typename D, typename I, typename S>
void neuron_forward_of(const T* current, const T* v_prev, const T* a_prev, const T* beta,
                       const T* rho, I n_neurons, I begin, I end, const NeuronScalarsT<S>& s,
                       T* v_new, T* a_new, T* z, D* d, const T* thresholds) {
  using C = typename NeuronCompute<T>::type;
#define IPU_SNN_NEURON_SURROGATE(GRAD)                                                          \
  neuron_forward_with<kPerNeuron>(current, v_prev, a_prev, beta, rho, n_neurons, begin, end, s, \
                                  GRAD<C>(s.scale), v_new, a_new, z, d, thresholds)
  switch (s.surrogate) {
    case SurrogateKind::kFastSigmoid: IPU_SNN_NEURON_SURROGATE(FastSigmoidGrad); break;
    case SurrogateKind::kAtan: IPU_SNN_NEURON_SURROGATE(AtanGrad); break;
    case SurrogateKind::kTriangle: IPU_SNN_NEURON_SURROGATE(TriangleGrad); break;
    case SurrogateKind::kBoxcar: IPU_SNN_NEURON_SURROGATE(BoxcarGrad); break;
  }
#undef IPU_SNN_NEURON_SURROGATE
}

// One step forward over flat elements [begin, end) of a [B, n_neurons] step:
// writes v_new, a_new (ALIF), z (0/1 as T) and d (the surrogate derivative as
// D). No output may alias an input or another output. Pack z into bits with
// pack_bits afterwards; a caller that owns whole bytes (see pack_bits) can do
// both on the same range while z is in cache.
template <typename T, typename D, typename I, typename S>
void neuron_forward(const T* current, const T* v_prev, const T* a_prev, const T* beta,
                    const T* rho, I n_neurons, non_deduced_t<I> begin, non_deduced_t<I> end,
                    const NeuronScalarsT<S>& s, T* v_new, T* a_new, T* z, D* d) {
  neuron_forward_of<false, T, D, I, S>(current, v_prev, a_prev, beta, rho, n_neurons, begin, end, s,
                                       v_new, a_new, z, d, nullptr);
}

// The same with one threshold per neuron, thresholds[n_neurons], in place of s.threshold (a
// learned threshold; ALIF: its base threshold). The CPU ops call this one always (with the
// scalar repeated where nothing is learned), so they compile one variant, not two.
template <typename T, typename D, typename I, typename S>
void neuron_forward(const T* current, const T* v_prev, const T* a_prev, const T* beta,
                    const T* rho, I n_neurons, non_deduced_t<I> begin, non_deduced_t<I> end,
                    const NeuronScalarsT<S>& s, T* v_new, T* a_new, T* z, D* d,
                    const T* thresholds) {
  neuron_forward_of<true, T, D, I, S>(current, v_prev, a_prev, beta, rho, n_neurons, begin, end, s,
                                      v_new, a_new, z, d, thresholds);
}

// Packs z (nonzero = spike) into bits for flat bytes [byte_begin, byte_end) of
// the packed [B, packed_row_bytes(n_neurons)] array. Each byte is written
// whole, so workers that own disjoint byte ranges never share a byte; the bits
// past n_neurons in a row's last byte are 0.
template <typename T, typename I>
void pack_bits(const T* z, I n_neurons, non_deduced_t<I> byte_begin, non_deduced_t<I> byte_end,
               uint8_t* bits) {
  if (byte_begin >= byte_end) return;
  const I row_bytes = packed_row_bytes(n_neurons);
  // One division for the first byte's row and column; then walk.
  I row = byte_begin / row_bytes, col = byte_begin - row * row_bytes;
  const T* zr = z + row * n_neurons;
  for (I k = byte_begin; k < byte_end; ++k) {
    const I first = col * 8;
    const I count = (n_neurons - first < 8) ? n_neurons - first : 8;
    uint32_t byte = 0;
    for (I t = 0; t < count; ++t) byte |= uint32_t(zr[first + t] != T(0)) << t;
    bits[k] = static_cast<uint8_t>(byte);
    if (++col == row_bytes) {
      col = 0;
      zr += n_neurons;
    }
  }
}

// Spike of neuron j in a packed row.
inline bool unpack_bit(const uint8_t* row_bits, int64_t j) {
  return (row_bits[j >> 3] >> (j & 7)) & 1;
}

// Unpacks flat elements [begin, end) of a [B, n_neurons] step into 0/1 values.
template <typename T>
void unpack_bits(const uint8_t* bits, int64_t n_neurons, int64_t begin, int64_t end,
                 T* z) {
  const int64_t row_bytes = packed_row_bytes(n_neurons);
  int64_t i = begin;
  while (i < end) {
    const int64_t row = i / n_neurons, row_start = row * n_neurons;
    const int64_t j_end = (end - row_start < n_neurons) ? end - row_start : n_neurons;
    const uint8_t* row_bits = bits + row * row_bytes;
    for (int64_t j = i - row_start; j < j_end; ++j) {
      z[row_start + j] = unpack_bit(row_bits, j) ? T(1) : T(0);
    }
    i = row_start + j_end;
  }
}

// Copies `rows` rows of n packed spikes, which start bit_offset bits into each
// row of src (src_row_bytes bytes a row), into the packed layout of a [rows, n]
// step: dst row r is packed_row_bytes(n) bytes whose bit j is bit
// bit_offset + j of src row r (a row's unused high bits are 0). A tile uses it
// to take its own neurons' spikes out of bytes it shares with its neighbours.
// Reads only the bytes of src rows that hold those spikes.
template <typename I>
void repack_bits(const uint8_t* src, I src_row_bytes, I bit_offset, I n, I rows,
                 uint8_t* dst) {
  const I dst_row_bytes = packed_row_bytes(n);
  for (I r = 0; r < rows; ++r, src += src_row_bytes, dst += dst_row_bytes) {
    for (I k = 0; k < dst_row_bytes; ++k) {
      const I bit = bit_offset + 8 * k, lo = bit >> 3, shift = bit & 7;
      const I left = n - 8 * k;  // spikes still to copy in this row
      uint32_t byte = uint32_t(src[lo]) >> shift;
      if (shift != 0 && left > 8 - shift) byte |= uint32_t(src[lo + 1]) << (8 - shift);
      if (left < 8) byte &= (1u << left) - 1u;
      dst[k] = static_cast<uint8_t>(byte);
    }
  }
}

// Backward of neuron j (flat index i) given its spike as 0/1 in C: gv, the
// gradient w.r.t. v before the reset (which is also grad_current), and ga,
// w.r.t. a after the decay (ALIF). With kLeak the leak's backward follows in
// the same pass: grad_v_prev = beta * gv, grad_a_prev = rho * ga. All inputs
// of an element are read before its outputs are written, so grad_v_prev may
// be grad_v and grad_a_prev may be grad_a (in-place carries).
// kCuba: a is the synaptic current i (after its decay and input); gv is w.r.t. v before the
// reset and ga = grad_a + gv w.r.t. i, which is also the gradient of the input current; the leak's
// backward is grad_v_prev = beta * gv, grad_a_prev = rho * ga (rho is alpha).
template <typename T, typename D, bool kSubtract, bool kAdaptive, bool kGradA, bool kLeak,
          bool kCuba, typename I>
inline void neuron_backward_element(
    const T* IPU_SNN_RESTRICT grad_z, const T* grad_v, const T* grad_a,
    const D* IPU_SNN_RESTRICT d, I i, I j,
    typename NeuronCompute<T>::type zc, typename NeuronCompute<T>::type adapt,
    T* IPU_SNN_RESTRICT gv_out, T* ga_out, const T* IPU_SNN_RESTRICT beta,
    const T* IPU_SNN_RESTRICT rho, T* grad_v_prev, T* grad_a_prev) {
  using C = typename NeuronCompute<T>::type;
  const C gvn = C(grad_v[i]);
  const C gan = ((kAdaptive || kCuba) && kGradA) ? C(grad_a[i]) : C(0);
  const C gx = (C(grad_z[i]) + (kCuba ? C(0) : gan)) * static_cast<C>(d[i]);
  const C gv = (kSubtract ? gvn : gvn * (C(1) - zc)) + gx;
  const C ga = kCuba ? gan + gv : gan - adapt * (kSubtract ? gx + gvn * zc : gx);
  gv_out[i] = T(gv);
  if ((kAdaptive || kCuba) && ga_out != nullptr) ga_out[i] = T(ga);
  if (kLeak) {
    grad_v_prev[i] = T(C(beta[j]) * gv);
    if (kAdaptive || kCuba) grad_a_prev[i] = T(C(rho[j]) * ga);
  }
}

// Backward over neurons [j_begin, j_end) of the row at flat index row_start.
// Whole bytes of spikes are loaded once for their 8 neurons, and a spike
// becomes 0/1 by arithmetic, not by a branch: a branch on the spikes
// mispredicts about as often as neurons fire, which made this loop ~5x slower.
template <typename T, typename D, bool kSubtract, bool kAdaptive, bool kGradA, bool kLeak,
          bool kCuba, typename I, typename S>
void neuron_backward_row(const T* grad_z, const T* grad_v, const T* grad_a,
                         const uint8_t* row_bits, const D* d, I row_start, I j_begin,
                         I j_end, S adapt_strength, T* gv_out, T* ga_out, const T* beta,
                         const T* rho, T* grad_v_prev, T* grad_a_prev) {
  using C = typename NeuronCompute<T>::type;
  const C adapt = C(adapt_strength);
#define IPU_SNN_BACKWARD_ELEMENT(J, BIT)                                                 \
  neuron_backward_element<T, D, kSubtract, kAdaptive, kGradA, kLeak, kCuba>(              \
      grad_z, grad_v, grad_a, d, row_start + (J), (J), C(int32_t(BIT)), adapt, gv_out,    \
      ga_out, beta, rho, grad_v_prev, grad_a_prev)
  I j = j_begin;
  for (; j < j_end && (j & 7) != 0; ++j) {
    IPU_SNN_BACKWARD_ELEMENT(j, (row_bits[j >> 3] >> (j & 7)) & 1u);
  }
  for (; j + 8 <= j_end; j += 8) {
    const uint32_t byte = row_bits[j >> 3];
    for (int k = 0; k < 8; ++k) IPU_SNN_BACKWARD_ELEMENT(j + k, (byte >> k) & 1u);
  }
  for (; j < j_end; ++j) {
    IPU_SNN_BACKWARD_ELEMENT(j, (row_bits[j >> 3] >> (j & 7)) & 1u);
  }
#undef IPU_SNN_BACKWARD_ELEMENT
}

template <typename T, typename D, bool kSubtract, bool kAdaptive, bool kGradA, bool kLeak,
          bool kCuba, typename I, typename S>
void neuron_backward_range(const T* grad_z, const T* grad_v, const T* grad_a,
                           const uint8_t* bits, const D* d, I n_neurons, I begin, I end,
                           S adapt_strength, T* gv_out, T* ga_out, const T* beta,
                           const T* rho, T* grad_v_prev, T* grad_a_prev) {
  if (begin >= end) return;
  const I row_bytes = packed_row_bytes(n_neurons);
  const I row = begin / n_neurons;
  I row_start = row * n_neurons, j_begin = begin - row_start;
  const uint8_t* row_bits = bits + row * row_bytes;
  while (row_start < end) {
    const I j_end = (end - row_start < n_neurons) ? end - row_start : n_neurons;
    neuron_backward_row<T, D, kSubtract, kAdaptive, kGradA, kLeak, kCuba>(
        grad_z, grad_v, grad_a, row_bits, d, row_start, j_begin, j_end, adapt_strength,
        gv_out, ga_out, beta, rho, grad_v_prev, grad_a_prev);
    row_start += n_neurons;
    row_bits += row_bytes;
    j_begin = 0;
  }
}

// The leak's backward, fused into neuron_backward when beta is given:
// grad_v_prev = beta * gv and (ALIF) grad_a_prev = rho * ga. Either output may
// be the corresponding gradient input (in place).
template <typename T>
struct LeakBackward {
  const T* beta = nullptr;  // null: no leak epilogue
  const T* rho = nullptr;   // ALIF
  T* grad_v_prev = nullptr;
  T* grad_a_prev = nullptr;
};

// One step backward of fire-and-reset over flat elements [begin, end) for the
// kernel `kind`, from grad_z, grad_v (w.r.t. v_new), grad_a (w.r.t. a_new;
// ALIF and CUBA, null means 0), the packed spikes and the saved d: writes gv
// (w.r.t. v before the reset; for LIF and ALIF also the gradient of the input
// current) and, when ga is not null, ga (w.r.t. a after the decay; for CUBA
// the gradient of the input current). Only adapt_strength and the reset kind
// enter the math: d already holds the surrogate. gv and ga may alias grad_v
// and grad_a; no other output may alias an input or another output.
template <typename T, typename D, typename I, typename S>
void neuron_backward_of(NeuronKind kind, const T* grad_z, const T* grad_v, const T* grad_a,
                        const uint8_t* bits, const D* d, I n_neurons, I begin, I end,
                        S adapt_strength, Reset reset, T* gv, T* ga,
                        const LeakBackward<T>& leak) {
#define IPU_SNN_NEURON_BACKWARD(SUB, A, G, L, CUBA)                                          \
  neuron_backward_range<T, D, SUB, A, G, L, CUBA>(grad_z, grad_v, grad_a, bits, d, n_neurons, \
                                                  begin, end, adapt_strength, gv, ga,          \
                                                  leak.beta, leak.rho, leak.grad_v_prev,       \
                                                  leak.grad_a_prev)
#define IPU_SNN_NEURON_BACKWARD_LEAK(SUB, A, G, CUBA)                           \
  if (leak.beta != nullptr) IPU_SNN_NEURON_BACKWARD(SUB, A, G, true, CUBA);     \
  else IPU_SNN_NEURON_BACKWARD(SUB, A, G, false, CUBA)
  const bool subtract = reset == Reset::kSubtract;
  if (kind == NeuronKind::kCuba) {
    if (grad_a == nullptr) {
      if (subtract) { IPU_SNN_NEURON_BACKWARD_LEAK(true, false, false, true); }
      else { IPU_SNN_NEURON_BACKWARD_LEAK(false, false, false, true); }
    } else {
      if (subtract) { IPU_SNN_NEURON_BACKWARD_LEAK(true, false, true, true); }
      else { IPU_SNN_NEURON_BACKWARD_LEAK(false, false, true, true); }
    }
  } else if (kind == NeuronKind::kLif) {
    if (subtract) { IPU_SNN_NEURON_BACKWARD_LEAK(true, false, false, false); }
    else { IPU_SNN_NEURON_BACKWARD_LEAK(false, false, false, false); }
  } else if (grad_a == nullptr) {
    if (subtract) { IPU_SNN_NEURON_BACKWARD_LEAK(true, true, false, false); }
    else { IPU_SNN_NEURON_BACKWARD_LEAK(false, true, false, false); }
  } else {
    if (subtract) { IPU_SNN_NEURON_BACKWARD_LEAK(true, true, true, false); }
    else { IPU_SNN_NEURON_BACKWARD_LEAK(false, true, true, false); }
  }
#undef IPU_SNN_NEURON_BACKWARD_LEAK
#undef IPU_SNN_NEURON_BACKWARD
}

// A learned threshold's gradient (ipu_snn/neuron/spec.py; the CPU window forms
// the same in ipu_snn/neuron/window.py `_threshold_grad`), accumulated over one
// step of `rows` rows of a [rows, width] block for its columns
// [c_begin, c_end): grad_threshold[c] += sum over r of
// (1 - z[r, c]) grad_v_new[r, c] - gv[r, c], for both resets, with grad_v_new
// w.r.t. v after the step's reset and gv w.r.t. v before it; z[r, c] is bit
// bit_offset + c of row r of bits (row_bytes a row).
template <typename T, typename Acc, typename I>
void threshold_grad_columns(const T* grad_v_new, const T* gv, const uint8_t* bits, I row_bytes,
                            I bit_offset, I width, I rows, I c_begin, I c_end,
                            Acc* grad_threshold) {
  using C = typename NeuronCompute<T>::type;
  for (I c = c_begin; c < c_end; ++c) {
    const I bit = bit_offset + c;
    C sum = C(grad_threshold[c]);
    for (I r = 0; r < rows; ++r) {
      const bool fired = (bits[r * row_bytes + (bit >> 3)] >> (bit & 7)) & 1u;
      const I i = r * width + c;
      sum += (fired ? C(0) : C(grad_v_new[i])) - C(gv[i]);
    }
    grad_threshold[c] = Acc(sum);
  }
}

// The LIF (adaptive false) or ALIF backward, as the Poplar vertices call it.
template <typename T, typename D, typename I, typename S>
void neuron_backward(const T* grad_z, const T* grad_v, const T* grad_a,
                     const uint8_t* bits, const D* d, I n_neurons, non_deduced_t<I> begin,
                     non_deduced_t<I> end, bool adaptive, S adapt_strength, Reset reset,
                     T* gv, T* ga, const LeakBackward<T>& leak = LeakBackward<T>()) {
  neuron_backward_of<T, D, I, S>(adaptive ? NeuronKind::kAlif : NeuronKind::kLif, grad_z, grad_v,
                                 grad_a, bits, d, n_neurons, begin, end, adapt_strength, reset, gv,
                                 ga, leak);
}

// The backward of the kernel the parameter struct names (s.kind), as the CPU ops call it.
template <typename T, typename D, typename I, typename S>
void neuron_backward(const T* grad_z, const T* grad_v, const T* grad_a,
                     const uint8_t* bits, const D* d, I n_neurons, non_deduced_t<I> begin,
                     non_deduced_t<I> end, const NeuronScalarsT<S>& s, T* gv, T* ga,
                     const LeakBackward<T>& leak = LeakBackward<T>()) {
  neuron_backward_of<T, D, I, S>(s.kind, grad_z, grad_v, grad_a, bits, d, n_neurons, begin, end,
                                 s.adapt_strength, s.reset, gv, ga, leak);
}

}  // namespace core
}  // namespace ipu_snn
