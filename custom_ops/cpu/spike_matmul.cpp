// CPU kernels of the sparse spike matmul: torch glue around spike_core.h.
//
// This file only validates tensors, builds the neuron index, picks the element
// type and splits the work over threads with at::parallel_for; the arithmetic
// is in the shared header. Threads split the batch in the forward and neurons
// (weight rows) in the two gradients; see each kernel for why.
// The ops live in the private namespace `ipu_snn_cpu`; the public, autograd-
// and torch.compile-aware ops (`ipu_snn::...`) are defined in Python
// (ipu_snn/ops/library.py) and call these through the backend registry.
// Registering through TORCH_LIBRARY rather than pybind keeps the build small:
// no pybind11 headers to compile.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "spike_core.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

namespace core = ipu_snn::core;

// Sums of reduced-precision weights are carried in float.
template <typename T>
struct Accumulator { using type = T; };
template <>
struct Accumulator<at::Half> { using type = float; };
template <>
struct Accumulator<at::BFloat16> { using type = float; };

at::ScalarType accumulator_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// Checks the spike list shared by every kernel and that every listed id is a
// valid row: an out-of-range id would otherwise read or write out of bounds.
void check_spikes(const at::Tensor& ids, const at::Tensor& counts, int64_t n_in,
                  const char* op) {
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kInt, op,
              ": ids must be int32 [B, K], got ", ids.scalar_type(), " ",
              ids.sizes());
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == at::kInt &&
                  counts.size(0) == ids.size(0),
              op, ": counts must be int32 [B] with B = ", ids.size(0), ", got ",
              counts.scalar_type(), " ", counts.sizes());
  TORCH_CHECK(ids.device().is_cpu() && counts.device().is_cpu(), op,
              ": the cpu backend needs CPU tensors");
  TORCH_CHECK(ids.numel() < std::numeric_limits<int32_t>::max(), op,
              ": B * K = ", ids.numel(), " does not fit the int32 neuron index");
  const int64_t batch = ids.size(0), capacity = ids.size(1);
  const int32_t* id = ids.data_ptr<int32_t>();
  const int32_t* cnt = counts.data_ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(cnt[b] >= 0 && cnt[b] <= capacity, op, ": counts[", b,
                "] = ", cnt[b], " is outside [0, capacity = ", capacity, "]");
    for (int32_t k = 0; k < cnt[b]; ++k) {
      const int32_t v = id[b * capacity + k];
      TORCH_CHECK(v >= 0 && v < n_in, op, ": ids[", b, ", ", k, "] = ", v,
                  " is outside [0, n_in = ", n_in, ")");
    }
  }
}

void check_matrix(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.dim() == 2 && t.device().is_cpu() &&
                  at::isFloatingType(t.scalar_type()),
              op, ": ", name, " must be a floating-point CPU matrix, got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

// Asks the kernel to back a freshly allocated tensor with transparent huge
// pages. The weight gradient is the one large tensor the backward allocates
// (n_in x n_out, 64 MiB at 4096 x 4096); glibc maps such blocks fresh on every
// call, and faulting them in 4 KiB at a time measured ~30 ms here, more than
// the kernel itself. With 2 MiB pages the faults all but vanish. This is what
// torch's THP_MEM_ALLOC_ENABLE=1 does for every allocation; here it is scoped
// to the tensor that needs it. Only the 2 MiB-aligned interior is advised, so
// neighbouring allocations are untouched; elsewhere this is a no-op.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = end & ~(kHugePage - 1);
  if (last > first) {
    // Advice only: if the kernel declines, the pages are just small.
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
}

// The spike list transposed to CSR by neuron (see spike_core.h). Building it is
// one pass over B * K ids, small next to the B * K * n_out additions it orders.
struct NeuronIndex {
  std::vector<int32_t> offsets, samples, slots;
};

NeuronIndex neuron_index(const int32_t* ids, const int32_t* counts, int64_t batch,
                         int64_t capacity, int64_t n_in, bool with_slots) {
  int64_t total = 0;
  for (int64_t b = 0; b < batch; ++b) total += counts[b];
  NeuronIndex index{std::vector<int32_t>(n_in + 1), std::vector<int32_t>(total),
                    std::vector<int32_t>(with_slots ? total : 0)};
  core::build_neuron_index(ids, counts, batch, capacity, n_in, index.offsets.data(),
                           index.samples.data(),
                           with_slots ? index.slots.data() : nullptr);
  return index;
}

// Splits neurons over threads so that each gets about the same number of index
// entries (activity is rarely uniform over neurons), and runs body(row_begin,
// row_end) for each share. Shares own disjoint rows, hence disjoint outputs.
template <typename F>
void for_each_row_share(const NeuronIndex& index, F body) {
  const int64_t n_in = static_cast<int64_t>(index.offsets.size()) - 1;
  const int64_t threads = at::get_num_threads();
  const int32_t* offsets = index.offsets.data();
  const int64_t total = offsets[n_in];
  auto boundary = [&](int64_t t) -> int64_t {
    if (t >= threads) return n_in;
    return std::lower_bound(offsets, offsets + n_in + 1, total * t / threads) - offsets;
  };
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) body(boundary(t), boundary(t + 1));
  });
}

// out[b, :] = sum over the first counts[b] ids of weight[id, :].
at::Tensor forward(const at::Tensor& ids_in, const at::Tensor& counts_in,
                   const at::Tensor& weight_in) {
  check_matrix(weight_in, "weight", "forward");
  const auto ids = ids_in.contiguous();
  const auto counts = counts_in.contiguous();
  const auto weight = weight_in.contiguous();
  const int64_t n_in = weight.size(0), n_out = weight.size(1);
  check_spikes(ids, counts, n_in, "forward");
  const int64_t batch = ids.size(0), capacity = ids.size(1);
  auto out = at::zeros({batch, n_out},
                       weight.options().dtype(accumulator_dtype(weight.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "ipu_snn_cpu_forward", [&] {
    using Acc = typename Accumulator<scalar_t>::type;
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const int32_t* id = ids.data_ptr<int32_t>();
    const int32_t* cnt = counts.data_ptr<int32_t>();
    Acc* o = out.data_ptr<Acc>();
    // Threads split the batch and each indexes only its own samples: output
    // rows stay private (no reduction), and every thread streams whole weight
    // rows, which measured ~1.5x faster than splitting columns into half rows.
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      const auto index = neuron_index(id + b0 * capacity, cnt + b0, b1 - b0, capacity,
                                      n_in, /*with_slots=*/false);
      core::forward_rows<scalar_t, Acc>(w, n_out, index.offsets.data(),
                                        index.samples.data(), 0, n_in, 0, n_out,
                                        o + b0 * n_out, n_out);
    });
  });
  return out.scalar_type() == weight.scalar_type() ? out : out.to(weight.scalar_type());
}

// grad_weight[i, :] = sum over samples b that list i among their first
// counts[b] ids of grad_out[b, :].
at::Tensor grad_weight(const at::Tensor& ids_in, const at::Tensor& counts_in,
                       const at::Tensor& grad_out_in, int64_t n_in) {
  check_matrix(grad_out_in, "grad_out", "grad_weight");
  const auto ids = ids_in.contiguous();
  const auto counts = counts_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  check_spikes(ids, counts, n_in, "grad_weight");
  TORCH_CHECK(grad_out.size(0) == ids.size(0), "grad_weight: grad_out has ",
              grad_out.size(0), " rows but the spikes have batch ", ids.size(0));
  const int64_t batch = ids.size(0), n_out = grad_out.size(1);
  const auto index = neuron_index(ids.data_ptr<int32_t>(), counts.data_ptr<int32_t>(),
                                  batch, ids.size(1), n_in, /*with_slots=*/false);
  // Every row is written by the kernel, so no zero fill is needed.
  auto gw = at::empty({n_in, n_out},
                      grad_out.options().dtype(accumulator_dtype(grad_out.scalar_type())));
  advise_huge_pages(gw);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(),
                                  "ipu_snn_cpu_grad_weight", [&] {
    using Acc = typename Accumulator<scalar_t>::type;
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    Acc* out = gw.data_ptr<Acc>();
    // Two samples may list the same neuron, so a batch split would race on its
    // gradient row; threads split neurons instead and never share a row.
    for_each_row_share(index, [&](int64_t r0, int64_t r1) {
      core::grad_weight_rows<scalar_t, Acc>(g, n_out, index.offsets.data(),
                                            index.samples.data(), r0, r1, 0, n_out,
                                            out, n_out);
    });
  });
  return gw.scalar_type() == grad_out.scalar_type() ? gw : gw.to(grad_out.scalar_type());
}

// values[b, k] = <weight[ids[b, k], :], grad_out[b, :]> for k < counts[b], else 0.
at::Tensor grad_input(const at::Tensor& ids_in, const at::Tensor& counts_in,
                      const at::Tensor& weight_in, const at::Tensor& grad_out_in) {
  check_matrix(weight_in, "weight", "grad_input");
  check_matrix(grad_out_in, "grad_out", "grad_input");
  const auto ids = ids_in.contiguous();
  const auto counts = counts_in.contiguous();
  const auto weight = weight_in.contiguous();
  // One dtype for both operands keeps the instantiations to one per type.
  const auto grad_out = grad_out_in.to(weight.scalar_type()).contiguous();
  const int64_t n_in = weight.size(0), n_out = weight.size(1);
  check_spikes(ids, counts, n_in, "grad_input");
  TORCH_CHECK(grad_out.size(0) == ids.size(0) && grad_out.size(1) == n_out,
              "grad_input: grad_out must be [", ids.size(0), ", ", n_out, "], got ",
              grad_out.sizes());
  const auto index = neuron_index(ids.data_ptr<int32_t>(), counts.data_ptr<int32_t>(),
                                  ids.size(0), ids.size(1), n_in, /*with_slots=*/true);
  auto values = at::zeros(ids.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "ipu_snn_cpu_grad_input", [&] {
    using Acc = typename Accumulator<scalar_t>::type;
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    scalar_t* v = values.data_ptr<scalar_t>();
    // Each value needs a whole weight row, so threads split neurons: a row is
    // read once for all the samples that listed it. Distinct entries write
    // distinct slots, so threads never collide.
    for_each_row_share(index, [&](int64_t r0, int64_t r1) {
      core::grad_input_rows<scalar_t, scalar_t, Acc>(
          w, n_out, n_out, g, n_out, index.offsets.data(), index.samples.data(),
          index.slots.data(), r0, r1, v);
    });
  });
  return values;
}

// Dense [B, N] spikes (nonzero = spike) and an optional near-threshold mask to
// (ids [B, K], counts, near_counts, dropped, near_dropped), all int32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> compact(
    const at::Tensor& z_in, const c10::optional<at::Tensor>& near_in,
    int64_t capacity) {
  TORCH_CHECK(z_in.dim() == 2 && z_in.device().is_cpu(),
              "compact: z must be a CPU matrix [B, N], got ", z_in.sizes(), " on ",
              z_in.device());
  TORCH_CHECK(capacity >= 0, "compact: capacity must be >= 0, got ", capacity);
  const auto z = z_in.contiguous();
  const int64_t batch = z.size(0), n = z.size(1);
  TORCH_CHECK(n <= std::numeric_limits<int32_t>::max() &&
                  capacity <= std::numeric_limits<int32_t>::max(),
              "compact: neuron ids and capacity must fit int32, got n = ", n,
              ", capacity = ", capacity);
  at::Tensor near;
  if (near_in.has_value()) {
    near = near_in->to(at::kBool).contiguous();
    TORCH_CHECK(near.sizes() == z.sizes(), "compact: near must have z's shape ",
                z.sizes(), ", got ", near.sizes());
  }
  const auto int_opts = z.options().dtype(at::kInt);
  auto ids = at::empty({batch, capacity}, int_opts);
  auto counts = at::empty({batch}, int_opts);
  auto near_counts = at::empty({batch}, int_opts);
  auto dropped = at::empty({batch}, int_opts);
  auto near_dropped = at::empty({batch}, int_opts);
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, z.scalar_type(),
                             "ipu_snn_cpu_compact", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const bool* np = near.defined() ? near.data_ptr<bool>() : nullptr;
    int32_t* id = ids.data_ptr<int32_t>();
    int32_t* spikes_out = counts.data_ptr<int32_t>();
    int32_t* near_out = near_counts.data_ptr<int32_t>();
    int32_t* dropped_out = dropped.data_ptr<int32_t>();
    int32_t* near_dropped_out = near_dropped.data_ptr<int32_t>();
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto c = core::compact_row<scalar_t, bool>(
            zp + b * n, np ? np + b * n : nullptr, n,
            static_cast<int32_t>(capacity), id + b * capacity);
        spikes_out[b] = c.spikes;
        near_out[b] = c.near;
        dropped_out[b] = c.dropped;
        near_dropped_out[b] = c.near_dropped;
      }
    });
  });
  return {ids, counts, near_counts, dropped, near_dropped};
}

// compact for spikes given as packed bits [R, ceil(n / 8)] (ipu_snn/core/bits.py),
// with optional near-threshold bits of the same shape: the lists of compact,
// without ever forming the dense [R, n] spikes.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> compact_bits(
    const at::Tensor& bits_in, const c10::optional<at::Tensor>& near_in, int64_t n,
    int64_t capacity) {
  TORCH_CHECK(bits_in.dim() == 2 && bits_in.device().is_cpu() &&
                  bits_in.scalar_type() == at::kByte && bits_in.size(1) == (n + 7) / 8,
              "compact_bits: bits must be a uint8 CPU matrix [R, ceil(n / 8)] for n = ", n,
              ", got ", bits_in.scalar_type(), " ", bits_in.sizes());
  TORCH_CHECK(capacity >= 0 && capacity <= std::numeric_limits<int32_t>::max() &&
                  n <= std::numeric_limits<int32_t>::max(),
              "compact_bits: capacity and n must fit int32, got ", capacity, ", ", n);
  const auto bits = bits_in.contiguous();
  at::Tensor near;
  if (near_in.has_value()) {
    near = near_in->contiguous();
    TORCH_CHECK(near.sizes() == bits.sizes() && near.scalar_type() == at::kByte,
                "compact_bits: near must be uint8 of the bits' shape ", bits.sizes());
  }
  const int64_t rows = bits.size(0), row_bytes = bits.size(1);
  const auto int_opts = bits.options().dtype(at::kInt);
  auto ids = at::empty({rows, capacity}, int_opts);
  auto counts = at::empty({rows}, int_opts);
  auto near_counts = at::empty({rows}, int_opts);
  auto dropped = at::empty({rows}, int_opts);
  auto near_dropped = at::empty({rows}, int_opts);
  const uint8_t* bp = bits.data_ptr<uint8_t>();
  const uint8_t* np = near.defined() ? near.data_ptr<uint8_t>() : nullptr;
  int32_t* id = ids.data_ptr<int32_t>();
  int32_t* c_out = counts.data_ptr<int32_t>();
  int32_t* nc_out = near_counts.data_ptr<int32_t>();
  int32_t* d_out = dropped.data_ptr<int32_t>();
  int32_t* nd_out = near_dropped.data_ptr<int32_t>();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto c = core::compact_bits_row(bp + r * row_bytes, np ? np + r * row_bytes : nullptr,
                                            n, static_cast<int32_t>(capacity), id + r * capacity);
      c_out[r] = c.spikes;
      nc_out[r] = c.near;
      d_out[r] = c.dropped;
      nd_out[r] = c.near_dropped;
    }
  });
  return {ids, counts, near_counts, dropped, near_dropped};
}

// ---- products on packed bits (ipu_snn/ops/product.py): a time loop's window of rows

// Spikes per row of packed bits [R, nb].
at::Tensor count_bits(const at::Tensor& bits_in) {
  TORCH_CHECK(bits_in.dim() == 2 && bits_in.device().is_cpu() && bits_in.scalar_type() == at::kByte,
              "count_bits: bits must be a uint8 CPU matrix [R, nb], got ", bits_in.sizes());
  const auto bits = bits_in.contiguous();
  const int64_t rows = bits.size(0), row_bytes = bits.size(1);
  auto counts = at::empty({rows}, bits.options().dtype(at::kInt));
  const uint8_t* bp = bits.data_ptr<uint8_t>();
  int32_t* cp = counts.data_ptr<int32_t>();
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int32_t total = 0;
      for (int64_t k = 0; k < row_bytes; ++k) total += __builtin_popcount(bp[r * row_bytes + k]);
      cp[r] = total;
    }
  });
  return counts;
}

void check_bits(const at::Tensor& bits, int64_t n_in, const char* op) {
  TORCH_CHECK(bits.dim() == 2 && bits.device().is_cpu() && bits.scalar_type() == at::kByte &&
                  bits.size(1) == (n_in + 7) / 8,
              op, ": bits must be a uint8 CPU matrix [R, ceil(n_in / 8)] for n_in = ", n_in, ", got ",
              bits.scalar_type(), " ", bits.sizes());
}

// out[r] = bias + the sum of the weight rows of row r's first `capacity` spikes;
// dropped[r] = the rest. The bias starts each row's sums: a separate add would
// pass over the whole [R, n_out] output again (as long as the gather at 5%).
std::tuple<at::Tensor, at::Tensor> bits_forward(const at::Tensor& bits_in, int64_t n_in,
                                                const at::Tensor& weight_in,
                                                const c10::optional<at::Tensor>& bias_in,
                                                int64_t capacity) {
  check_bits(bits_in, n_in, "bits_forward");
  check_matrix(weight_in, "weight", "bits_forward");
  TORCH_CHECK(weight_in.size(0) == n_in, "bits_forward: weight must have n_in = ", n_in, " rows");
  const auto bits = bits_in.contiguous();
  const auto weight = weight_in.contiguous();
  const int64_t rows = bits.size(0), row_bytes = bits.size(1), n_out = weight.size(1);
  const auto acc_options = weight.options().dtype(accumulator_dtype(weight.scalar_type()));
  at::Tensor bias;
  if (bias_in.has_value()) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == n_out, "bits_forward: bias must be [", n_out, "]");
    bias = bias_in->to(acc_options).contiguous();
  }
  auto out = at::empty({rows, n_out}, acc_options);
  auto dropped = at::empty({rows}, bits.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "ipu_snn_cpu_bits_forward", [&] {
    using Acc = typename Accumulator<scalar_t>::type;
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const uint8_t* bp = bits.data_ptr<uint8_t>();
    const Acc* bias_p = bias.defined() ? bias.data_ptr<Acc>() : nullptr;
    Acc* o = out.data_ptr<Acc>();
    int32_t* dp = dropped.data_ptr<int32_t>();
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> ids(std::max<int64_t>(1, std::min(capacity, n_in)));
      for (int64_t r = r0; r < r1; ++r) {
        Acc* row = o + r * n_out;
        if (bias_p != nullptr) {
          std::copy(bias_p, bias_p + n_out, row);
        } else {
          std::fill(row, row + n_out, Acc(0));
        }
        const int64_t total = core::gather_add_bits_row<scalar_t, Acc>(w, n_out, bp + r * row_bytes, n_in,
                                                                      capacity, ids.data(), o + r * n_out);
        dp[r] = static_cast<int32_t>(std::max<int64_t>(0, total - capacity));
      }
    });
  });
  return {out.scalar_type() == weight.scalar_type() ? out : out.to(weight.scalar_type()), dropped};
}

// Weights up to this many elements get a private gradient per thread and are walked in
// row order (the weight stays in cache); larger ones in the neuron order of grad_weight.
constexpr int64_t kPrivateGradElements = int64_t(1) << 20;

// grad_weight = spikes^T @ grad_out over row r's first `capacity` spikes.
at::Tensor bits_grad_weight(const at::Tensor& bits_in, int64_t n_in, const at::Tensor& grad_out_in,
                            int64_t capacity) {
  check_bits(bits_in, n_in, "bits_grad_weight");
  check_matrix(grad_out_in, "grad_out", "bits_grad_weight");
  TORCH_CHECK(grad_out_in.size(0) == bits_in.size(0), "bits_grad_weight: grad_out has ",
              grad_out_in.size(0), " rows, the bits ", bits_in.size(0));
  const auto bits = bits_in.contiguous();
  const auto grad_out = grad_out_in.contiguous();
  const int64_t rows = bits.size(0), row_bytes = bits.size(1), n_out = grad_out.size(1);
  if (n_in * n_out > kPrivateGradElements) {
    const int32_t cap = static_cast<int32_t>(std::min<int64_t>(capacity, n_in));
    auto ids = at::empty({rows, cap}, bits.options().dtype(at::kInt));
    auto counts = at::empty({rows}, bits.options().dtype(at::kInt));
    int32_t* id = ids.data_ptr<int32_t>();
    int32_t* cnt = counts.data_ptr<int32_t>();
    const uint8_t* bp = bits.data_ptr<uint8_t>();
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        cnt[r] = core::compact_bits_row(bp + r * row_bytes, nullptr, n_in, cap, id + r * cap).spikes;
      }
    });
    return grad_weight(ids, counts, grad_out, n_in);
  }
  const auto acc_type = accumulator_dtype(grad_out.scalar_type());
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (rows + 255) / 256));
  auto partial = at::zeros({threads, n_in, n_out}, grad_out.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(),
                                  "ipu_snn_cpu_bits_grad_weight", [&] {
    using Acc = typename Accumulator<scalar_t>::type;
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const uint8_t* bp = bits.data_ptr<uint8_t>();
    Acc* acc = partial.data_ptr<Acc>();
    // Each task owns a block of rows and its own gradient copy: no two tasks add into one row.
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        Acc* mine = acc + t * n_in * n_out;
        std::vector<int32_t> ids(std::max<int64_t>(1, std::min(capacity, n_in)));
        for (int64_t r = r0; r < r1; ++r) {
          core::scatter_add_bits_row<scalar_t, Acc>(g + r * n_out, n_out, bp + r * row_bytes, n_in,
                                                    capacity, ids.data(), mine);
        }
      }
    });
  });
  auto gw = threads == 1 ? partial[0] : partial.sum(0);
  return gw.scalar_type() == grad_out.scalar_type() ? gw : gw.to(grad_out.scalar_type());
}

// grad_in[r, j] = <weight[j], grad_out[r]> at row r's listed neurons (its first `capacity`
// spikes, then near-threshold neurons up to `capacity` in all), 0 elsewhere.
at::Tensor bits_grad_input(const at::Tensor& bits_in, const c10::optional<at::Tensor>& near_in,
                           int64_t n_in, const at::Tensor& weight_in, const at::Tensor& grad_out_in,
                           int64_t capacity) {
  check_bits(bits_in, n_in, "bits_grad_input");
  check_matrix(weight_in, "weight", "bits_grad_input");
  const auto bits = bits_in.contiguous();
  const auto weight = weight_in.contiguous();
  const auto grad_out = grad_out_in.to(weight.scalar_type()).contiguous();
  const int64_t rows = bits.size(0), row_bytes = bits.size(1), n_out = weight.size(1);
  TORCH_CHECK(weight.size(0) == n_in && grad_out.size(0) == rows && grad_out.size(1) == n_out,
              "bits_grad_input: weight must be [", n_in, ", n_out] and grad_out [", rows, ", n_out]");
  at::Tensor near;
  if (near_in.has_value()) {
    near = near_in->contiguous();
    check_bits(near, n_in, "bits_grad_input (near)");
  }
  const int32_t cap = static_cast<int32_t>(std::min<int64_t>(capacity, n_in));
  auto grad_in = at::empty({rows, n_in}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "ipu_snn_cpu_bits_grad_input", [&] {
    using Acc = typename Accumulator<scalar_t>::type;
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const uint8_t* bp = bits.data_ptr<uint8_t>();
    const uint8_t* np = near.defined() ? near.data_ptr<uint8_t>() : nullptr;
    scalar_t* gi = grad_in.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> ids(std::max<int32_t>(cap, 1));
      for (int64_t r = r0; r < r1; ++r) {
        const auto c = core::compact_bits_row(bp + r * row_bytes, np ? np + r * row_bytes : nullptr, n_in,
                                              cap, ids.data());
        core::listed_grad_row<scalar_t, Acc>(w, n_out, g + r * n_out, ids.data(), c.spikes + c.near, n_in,
                                             gi + r * n_in);
      }
    });
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY(ipu_snn_cpu, m) {
  m.def("forward(Tensor ids, Tensor counts, Tensor weight) -> Tensor");
  m.def("grad_weight(Tensor ids, Tensor counts, Tensor grad_out, int n_in) -> Tensor");
  m.def("grad_input(Tensor ids, Tensor counts, Tensor weight, Tensor grad_out) -> Tensor");
  m.def("compact(Tensor z, Tensor? near, int capacity) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("compact_bits(Tensor bits, Tensor? near, int n, int capacity) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("count_bits(Tensor bits) -> Tensor");
  m.def("bits_forward(Tensor bits, int n_in, Tensor weight, Tensor? bias, int capacity) -> (Tensor, Tensor)");
  m.def("bits_grad_weight(Tensor bits, int n_in, Tensor grad_out, int capacity) -> Tensor");
  m.def("bits_grad_input(Tensor bits, Tensor? near, int n_in, Tensor weight, Tensor grad_out, "
        "int capacity) -> Tensor");
}

TORCH_LIBRARY_IMPL(ipu_snn_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("grad_weight", &grad_weight);
  m.impl("grad_input", &grad_input);
  m.impl("compact", &compact);
  m.impl("compact_bits", &compact_bits);
  m.impl("count_bits", &count_bits);
  m.impl("bits_forward", &bits_forward);
  m.impl("bits_grad_weight", &bits_grad_weight);
  m.impl("bits_grad_input", &bits_grad_input);
}
