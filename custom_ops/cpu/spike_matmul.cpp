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

}  // namespace

TORCH_LIBRARY(ipu_snn_cpu, m) {
  m.def("forward(Tensor ids, Tensor counts, Tensor weight) -> Tensor");
  m.def("grad_weight(Tensor ids, Tensor counts, Tensor grad_out, int n_in) -> Tensor");
  m.def("grad_input(Tensor ids, Tensor counts, Tensor weight, Tensor grad_out) -> Tensor");
  m.def("compact(Tensor z, Tensor? near, int capacity) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipu_snn_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("grad_weight", &grad_weight);
  m.impl("grad_input", &grad_input);
  m.impl("compact", &compact);
}
