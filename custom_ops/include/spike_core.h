// Inner loops of the sparse spike matmul, shared by every compiled backend.
//
// The CPU torch extension (custom_ops/cpu/) and the Poplar vertices include this
// header, so the arithmetic that CI tests on CPU is the arithmetic an IPU tile
// runs. It therefore has no torch or Poplar includes, no allocation and no
// threads: callers own the memory and the parallel decomposition (batch or
// weight-row ranges on CPU threads, weight-row ranges on IPU tiles).
//
// Spike format (ipu_snn/ops/spikes.py): sample b lists counts[b] int32 neuron
// ids in ids[b * capacity + k]. Weights are row-major [n_in, n_out].
//
// The CPU loops walk a *neuron index*: the spike list transposed to CSR
// form, so that for neuron i, e in [offsets[i], offsets[i + 1]) enumerates the
// samples that listed it: samples[e] = b and, when asked for, the flat list
// position slots[e] = b * capacity + k. Walking neurons in order streams each
// weight row once, however many samples fired it, instead of fetching rows at
// random once per (sample, spike). Random row fetches miss the TLB on every row
// (a row is at least one page), which made a per-sample gather about 4x slower
// on CPU. A tile has no cache or TLB, holds only a few weight columns, and
// shares its work among worker threads that cannot wait for one another to
// build an index; the packed-bit loops further down (network_codelets.cpp's)
// walk each sample's bits directly instead, each worker owning the outputs it
// writes, and add in ascending neuron order, as the CPU loops do.
//
// T is the weight/gradient element type (float, double, half, bfloat16); Acc
// is the type sums are carried in, so half weights accumulate in float. I,
// where a function takes it, is the index type: int64_t on the CPU, unsigned
// on a tile (whose 32-bit cores divide and multiply 64-bit values in
// software).
#pragma once

#include <cstdint>

// The compiler may assume the pointer is the only way to its data (GCC, Clang and popc).
#if defined(__GNUC__) || defined(__clang__)
#define IPU_SNN_SPIKE_RESTRICT __restrict__
#else
#define IPU_SNN_SPIKE_RESTRICT
#endif

namespace ipu_snn {
namespace core {

// Columns summed per register block. 64 floats fill eight 256-bit (or four
// 512-bit) vector registers, so a running sum stays in registers while the
// loop walks the samples that listed the neuron.
constexpr int64_t kBlockLanes = 64;

// Partial sums a dot product keeps apart. Without -ffast-math a compiler may
// not reorder a floating-point reduction, so independent partial sums are what
// lets it vectorise the loop.
constexpr int kDotLanes = 16;

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Builds the neuron index of the first counts[b] entries of every sample.
// offsets has n_in + 1 slots; samples (and slots, which may be null when only
// the sample is needed) have sum(counts) slots. Entries of one neuron come out
// in batch order, so sums over them are deterministic. The sample is stored
// rather than derived from the slot because a division per entry and column
// block costs as much as the block's additions. Ids must lie in [0, n_in)
// (callers check).
inline void build_neuron_index(const int32_t* ids, const int32_t* counts,
                               int64_t batch, int64_t capacity, int64_t n_in,
                               int32_t* offsets, int32_t* samples, int32_t* slots) {
  for (int64_t i = 0; i <= n_in; ++i) offsets[i] = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int32_t k = 0; k < counts[b]; ++k) ++offsets[ids[b * capacity + k] + 1];
  }
  for (int64_t i = 0; i < n_in; ++i) offsets[i + 1] += offsets[i];
  // Place entries using offsets[i] as neuron i's write cursor; afterwards each
  // cursor sits at the start of the next neuron, so shifting by one restores
  // the start offsets without a scratch array.
  for (int64_t b = 0; b < batch; ++b) {
    for (int32_t k = 0; k < counts[b]; ++k) {
      const int32_t e = offsets[ids[b * capacity + k]]++;
      samples[e] = static_cast<int32_t>(b);
      if (slots != nullptr) slots[e] = static_cast<int32_t>(b * capacity + k);
    }
  }
  for (int64_t i = n_in; i > 0; --i) offsets[i] = offsets[i - 1];
  offsets[0] = 0;
}

// Forward, spikes @ weight, for neurons [row_begin, row_end) and columns
// [col_begin, col_end): out[b, c] += weight[i, c] for every entry (i, b).
// Spikes are 1, so nothing is multiplied. out must be zeroed by the caller.
// The loop adds a whole weight-row slice into one output row at a time: long
// unit-stride runs are what the hardware prefetcher streams well, and the
// slice stays in L1 for the next sample that fired the same neuron.
template <typename T, typename Acc>
void forward_rows(const T* weight, int64_t weight_stride, const int32_t* offsets,
                  const int32_t* samples, int64_t row_begin, int64_t row_end,
                  int64_t col_begin, int64_t col_end, Acc* out, int64_t out_stride) {
  for (int64_t i = row_begin; i < row_end; ++i) {
    const T* row = weight + i * weight_stride;
    for (int32_t e = offsets[i]; e < offsets[i + 1]; ++e) {
      Acc* o = out + static_cast<int64_t>(samples[e]) * out_stride;
      for (int64_t c = col_begin; c < col_end; ++c) o[c] += Acc(row[c]);
    }
  }
}

// Weight gradient, spikes^T @ grad_out, for neurons [row_begin, row_end) and
// columns [col_begin, col_end): grad_weight[i, c] = sum over entries (i, b) of
// grad_out[b, c]. Overwrites, so neurons that no sample listed get an explicit
// 0 and the caller need not clear the (large) gradient first. Sums run in
// registers, kBlockLanes columns at a time, so each gradient element is
// written once.
template <typename G, typename Acc>
void grad_weight_rows(const G* grad_out, int64_t grad_stride, const int32_t* offsets,
                      const int32_t* samples, int64_t row_begin, int64_t row_end,
                      int64_t col_begin, int64_t col_end, Acc* grad_weight,
                      int64_t grad_weight_stride) {
  for (int64_t i = row_begin; i < row_end; ++i) {
    const int32_t first = offsets[i], last = offsets[i + 1];
    Acc* gw = grad_weight + i * grad_weight_stride;
    if (first == last) {
      for (int64_t c = col_begin; c < col_end; ++c) gw[c] = Acc(0);
      continue;
    }
    for (int64_t c = col_begin; c < col_end; c += kBlockLanes) {
      const int64_t width = min_i64(kBlockLanes, col_end - c);
      Acc acc[kBlockLanes];
      for (int64_t j = 0; j < kBlockLanes; ++j) acc[j] = Acc(0);
      for (int32_t e = first; e < last; ++e) {
        const G* g = grad_out + static_cast<int64_t>(samples[e]) * grad_stride + c;
        if (width == kBlockLanes) {
          // A constant trip count lets the compiler keep acc in registers.
          for (int64_t j = 0; j < kBlockLanes; ++j) acc[j] += Acc(g[j]);
        } else {
          for (int64_t j = 0; j < width; ++j) acc[j] += Acc(g[j]);
        }
      }
      for (int64_t j = 0; j < width; ++j) gw[c + j] = acc[j];
    }
  }
}

// Dot product of n elements with kDotLanes independent partial sums.
template <typename T, typename G, typename Acc, typename I>
Acc dot(const T* a, const G* b, I n) {
  Acc partial[kDotLanes];
  for (int l = 0; l < kDotLanes; ++l) partial[l] = Acc(0);
  I j = 0;
  for (; j + kDotLanes <= n; j += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) partial[l] += Acc(a[j + l]) * Acc(b[j + l]);
  }
  for (; j < n; ++j) partial[0] += Acc(a[j]) * Acc(b[j]);
  Acc sum = Acc(0);
  for (int l = 0; l < kDotLanes; ++l) sum += partial[l];
  return sum;
}

// Input gradient at the listed neurons only, for neurons [row_begin, row_end):
// values[slots[e]] = <weight[i, :], grad_out[samples[e], :]> for every entry e.
// Positions that no entry names are left untouched (the caller zeroes them):
// neurons not listed get no gradient, which is what makes the backward sparse.
template <typename T, typename G, typename Acc>
void grad_input_rows(const T* weight, int64_t weight_stride, int64_t n_cols,
                     const G* grad_out, int64_t grad_stride, const int32_t* offsets,
                     const int32_t* samples, const int32_t* slots, int64_t row_begin,
                     int64_t row_end, T* values) {
  for (int64_t i = row_begin; i < row_end; ++i) {
    const T* row = weight + i * weight_stride;
    for (int32_t e = offsets[i]; e < offsets[i + 1]; ++e) {
      const G* g = grad_out + static_cast<int64_t>(samples[e]) * grad_stride;
      values[slots[e]] = T(dot<T, G, Acc>(row, g, n_cols));
    }
  }
}

// What compact_row found in one sample.
struct CompactCounts {
  int32_t spikes;        // spike ids written (at most capacity)
  int32_t near;          // near-threshold ids written after them
  int32_t dropped;       // spikes that did not fit: the overflow to report
  int32_t near_dropped;  // near-threshold neurons that did not fit
};

// Writes the ids of the nonzero entries of z[0, n) in ascending order, then the
// ids where near[j] is set and z[j] is zero, into ids[0, capacity). Spikes take
// precedence: they make the forward exact, while near-threshold entries only
// widen the sparse backward. Unused slots are set to id 0, a valid row, so a
// consumer that reads past the count never indexes out of bounds.
// `near` may be null (no second threshold).
template <typename Z, typename M, typename I>
CompactCounts compact_row(const Z* z, const M* near, I n, int32_t capacity,
                          int32_t* ids) {
  CompactCounts result{0, 0, 0, 0};
  int32_t total = 0;
  for (I j = 0; j < n; ++j) {
    if (z[j] != Z(0)) {
      if (total < capacity) ids[total] = static_cast<int32_t>(j);
      ++total;
    }
  }
  result.spikes = total < capacity ? total : capacity;
  result.dropped = total - result.spikes;
  int32_t filled = result.spikes;
  if (near != nullptr) {
    for (I j = 0; j < n; ++j) {
      if (near[j] && z[j] == Z(0)) {
        if (filled < capacity) {
          ids[filled++] = static_cast<int32_t>(j);
          ++result.near;
        } else {
          ++result.near_dropped;
        }
      }
    }
  }
  for (int32_t k = filled; k < capacity; ++k) ids[k] = 0;
  return result;
}

// The bits of byte k of a row of n neurons that hold neurons: the last byte's
// padding bits (neurons n and up) are dropped. The packing writes them 0, but
// bits that arrive from outside need not be, and an id >= n would index past
// every [n, ...] weight, gradient and list: the list builders below read
// every byte through this, so padding never indexes memory.
inline uint32_t row_byte(const uint8_t* bits, int64_t k, int64_t n) {
  const int64_t left = n - 8 * k;  // neurons from this byte on
  return left >= 8 ? uint32_t(bits[k]) : uint32_t(bits[k]) & ((1u << left) - 1u);
}

// The ids of a row's spikes, ascending, at most `capacity` of them; returns
// how many spikes the row has in all (more than written when it overflows).
// Padding bits are not spikes (row_byte).
inline int64_t spike_ids(const uint8_t* bits, int64_t n, int64_t capacity, int32_t* ids) {
  const int64_t n_bytes = (n + 7) / 8;
  int64_t total = 0, k = 0;
  // Eight bytes at a time: at a few percent most words are empty or hold one
  // spike, and a word test costs what a byte test does (3x faster measured).
  for (; k + 8 <= n_bytes; k += 8) {
    uint64_t word = 0;
    for (int64_t b = 0; b < 8; ++b) word |= static_cast<uint64_t>(row_byte(bits, k + b, n)) << (8 * b);
    while (word != 0) {
      if (total < capacity) ids[total] = static_cast<int32_t>(8 * k + __builtin_ctzll(word));
      ++total;
      word &= word - 1;
    }
  }
  for (; k < n_bytes; ++k) {
    uint32_t byte = row_byte(bits, k, n);
    while (byte != 0) {
      if (total < capacity) ids[total] = static_cast<int32_t>(8 * k + __builtin_ctz(byte));
      ++total;
      byte &= byte - 1;
    }
  }
  return total;
}

// compact_row for spikes given as packed bits (neuron j is bit j % 8 of byte
// j / 8, ipu_snn/core/bits.py): the same lists, in the same order, from
// ceil(n / 8) bytes instead of n values. `near_bits` may be null; a neuron set
// in both counts as a spike. Walking set bits with a count-trailing-zeros
// keeps the cost proportional to the spikes, not to n.
inline CompactCounts compact_bits_row(const uint8_t* bits, const uint8_t* near_bits,
                                      int64_t n, int32_t capacity, int32_t* ids) {
  CompactCounts result{0, 0, 0, 0};
  const int64_t n_bytes = (n + 7) / 8;
  const int64_t total = spike_ids(bits, n, capacity, ids);
  result.spikes = static_cast<int32_t>(min_i64(total, capacity));
  result.dropped = static_cast<int32_t>(total - result.spikes);
  int32_t filled = result.spikes;
  if (near_bits != nullptr) {
    for (int64_t k = 0; k < n_bytes; ++k) {
      uint32_t byte = row_byte(near_bits, k, n) & ~static_cast<uint32_t>(bits[k]) & 0xffu;
      while (byte != 0) {
        const int64_t j = 8 * k + __builtin_ctz(byte);
        byte &= byte - 1;
        if (filled < capacity) {
          ids[filled++] = static_cast<int32_t>(j);
          ++result.near;
        } else {
          ++result.near_dropped;
        }
      }
    }
  }
  for (int32_t k = filled; k < capacity; ++k) ids[k] = 0;
  return result;
}

// The host build sums float rows with GCC/Clang vector types: 4 accumulators
// of 8 lanes hold 32 output columns in registers over all the ids, which the
// compiler does not find on its own through the id indirection (measured 33 ms
// against 93 ms for the scalar loop, 51200 rows of 700 -> 256 at 5%, one
// thread). popc (__IPU__) takes the portable loop below.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__IPU__)
namespace detail {
typedef float f32x8 __attribute__((vector_size(32), aligned(4)));
constexpr int64_t kVectors = 4;
constexpr int64_t kVectorLanes = 8 * kVectors;

// Columns [0, returned) of out += the rows; the caller does the rest.
inline int64_t gather_add_vectors(const float* IPU_SNN_SPIKE_RESTRICT weight, int64_t n_out,
                                  const int32_t* IPU_SNN_SPIKE_RESTRICT ids, int32_t count,
                                  float* IPU_SNN_SPIKE_RESTRICT out) {
  int64_t c = 0;
  for (; c + kVectorLanes <= n_out; c += kVectorLanes) {
    f32x8 acc[kVectors];
    for (int64_t j = 0; j < kVectors; ++j) acc[j] = *reinterpret_cast<const f32x8*>(out + c + 8 * j);
    for (int32_t k = 0; k < count; ++k) {
      const float* row = weight + static_cast<int64_t>(ids[k]) * n_out + c;
      for (int64_t j = 0; j < kVectors; ++j) acc[j] += *reinterpret_cast<const f32x8*>(row + 8 * j);
    }
    for (int64_t j = 0; j < kVectors; ++j) *reinterpret_cast<f32x8*>(out + c + 8 * j) = acc[j];
  }
  return c;
}
}  // namespace detail
#define IPU_SNN_HOST_VECTORS 1
#endif

namespace detail {
// Other types (double, half) take the portable loop from column 0.
template <typename T, typename Acc>
inline int64_t vector_columns(const T*, int64_t, const int32_t*, int32_t, Acc*) {
  return 0;
}
#ifdef IPU_SNN_HOST_VECTORS
inline int64_t vector_columns(const float* weight, int64_t n_out, const int32_t* ids,
                              int32_t count, float* out) {
  return gather_add_vectors(weight, n_out, ids, count, out);
}
#endif
}  // namespace detail

// out[0, n_out) += the weight rows of the first `count` ids: one sample's
// spikes @ weight, the gather-add of the time loop's products. The sums of a
// block of columns stay in registers over all the ids, and the output block
// is read and written once: a plain `out[c] += row[c]` per id would load and
// store the output once per id, which made this loop bandwidth-bound.
template <typename T, typename Acc>
void gather_add_row(const T* IPU_SNN_SPIKE_RESTRICT weight, int64_t n_out,
                    const int32_t* IPU_SNN_SPIKE_RESTRICT ids, int32_t count,
                    Acc* IPU_SNN_SPIKE_RESTRICT out) {
  for (int64_t c = detail::vector_columns(weight, n_out, ids, count, out); c < n_out;
       c += kBlockLanes) {
    const int64_t width = min_i64(kBlockLanes, n_out - c);
    Acc acc[kBlockLanes];
    for (int64_t j = 0; j < width; ++j) acc[j] = out[c + j];
    for (int32_t k = 0; k < count; ++k) {
      const T* row = weight + static_cast<int64_t>(ids[k]) * n_out + c;
      for (int64_t j = 0; j < width; ++j) acc[j] += Acc(row[j]);
    }
    for (int64_t j = 0; j < width; ++j) out[c + j] = acc[j];
  }
}

// One sample's input gradient at its listed neurons: out[ids[k]] =
// <weight[ids[k], :], grad_out> for k < count, 0 at every other neuron of
// [0, n_in). The sparse backward of the recurrent product (sparse_grad: spikes).
template <typename T, typename Acc>
void listed_grad_row(const T* weight, int64_t n_out, const T* grad_out, const int32_t* ids,
                     int32_t count, int64_t n_in, T* out) {
  for (int64_t j = 0; j < n_in; ++j) out[j] = T(0);
  for (int32_t k = 0; k < count; ++k) {
    const int64_t j = ids[k];
    out[j] = T(dot<T, T, Acc>(weight + j * n_out, grad_out, n_out));
  }
}


// Row-order kernels on packed bits. When the weight (or its gradient) fits in
// cache, walking rows in order and touching the weight rows of each row's
// spikes beats the neuron order above: the [R, n_out] operand streams once,
// sequentially, and the weight stays cached. This is the shape of a time
// loop's products (R = steps x samples rows, a few hundred neurons per side).
// Only the first `capacity` spikes of a row count (ascending neuron order, as
// compact_bits_row lists them); `ids` is scratch for min(capacity, n_in) ids.
// The return value is the row's total spikes.

// out[0, n_out) += weight rows of the row's spikes.
template <typename T, typename Acc>
int64_t gather_add_bits_row(const T* weight, int64_t n_out, const uint8_t* bits, int64_t n_in,
                            int64_t capacity, int32_t* ids, Acc* out) {
  const int64_t total = spike_ids(bits, n_in, capacity, ids);
  gather_add_row<T, Acc>(weight, n_out, ids, static_cast<int32_t>(min_i64(total, capacity)), out);
  return total;
}

// grad_weight rows of the row's spikes += grad_row[0, n_out).
template <typename G, typename Acc>
void scatter_add_bits_row(const G* IPU_SNN_SPIKE_RESTRICT grad_row, int64_t n_out,
                          const uint8_t* bits, int64_t n_in, int64_t capacity, int32_t* ids,
                          Acc* IPU_SNN_SPIKE_RESTRICT grad_weight) {
  const int64_t count = min_i64(spike_ids(bits, n_in, capacity, ids), capacity);
  for (int64_t k = 0; k < count; ++k) {
    Acc* gw = grad_weight + static_cast<int64_t>(ids[k]) * n_out;
    for (int64_t c = 0; c < n_out; ++c) gw[c] += Acc(grad_row[c]);
  }
}

// ------------------------------------------------------- Spikes as packed bits --
// A step's spikes as packed bits (neuron i is bit i % 8 of byte i / 8 of the
// sample's row of row_bytes bytes): no list, no capacity, exact whatever the
// rate. Set bits are walked with a count-trailing-zeros, so the cost follows
// the spikes, not n_in.

// out[c] += the sum of weight[i, c] over the set bits i < n_in of one row,
// c < n_cols (weight rows strided by weight_stride).
template <typename T, typename Acc, typename I>
void add_rows_of_bits(const T* weight, I weight_stride, I n_cols, const uint8_t* row_bits, I n_in,
                      Acc* out) {
  const I n_bytes = (n_in + 7) / 8;
  for (I k = 0; k < n_bytes; ++k) {
    uint32_t byte = row_bits[k];
    while (byte != 0) {
      const I i = 8 * k + static_cast<I>(__builtin_ctz(byte));
      byte &= byte - 1;
      if (i >= n_in) break;
      const T* w = weight + i * weight_stride;
      for (I c = 0; c < n_cols; ++c) out[c] += Acc(w[c]);
    }
  }
}

// grad_weight[i, c] += the sum of grad_out[b, c] over the samples b < batch
// whose bit i is set, for the weight rows [i_begin, i_end) (a worker's share),
// c < n_cols; bits rows of row_bytes bytes, grad_out rows strided by
// grad_stride. Each sample's bytes over the range are walked set bit by set
// bit, samples in order, so every sum is deterministic.
template <typename G, typename Acc, typename I>
void grad_weight_bits(const G* grad_out, I grad_stride, I n_cols, const uint8_t* bits, I row_bytes,
                      I batch, I i_begin, I i_end, Acc* grad_weight, I weight_stride) {
  if (i_begin >= i_end) return;
  const I k0 = i_begin / 8, k1 = (i_end + 7) / 8;
  for (I b = 0; b < batch; ++b) {
    const uint8_t* row = bits + b * row_bytes;
    const G* g = grad_out + b * grad_stride;
    for (I k = k0; k < k1; ++k) {
      uint32_t byte = row[k];
      if (k == k0) byte &= 0xFFu << (i_begin % 8);
      if (k == k1 - 1 && i_end % 8 != 0) byte &= (1u << (i_end % 8)) - 1u;
      while (byte != 0) {
        const I i = 8 * k + static_cast<I>(__builtin_ctz(byte));
        byte &= byte - 1;
        Acc* gw = grad_weight + i * weight_stride;
        for (I c = 0; c < n_cols; ++c) gw[c] += Acc(g[c]);
      }
    }
  }
}

// The dense input gradient of the tile's columns for `rows` samples, laid out
// neuron-major: partial[i * rows + r] = <weight[i, 0:n_cols], grad_out[r, 0:n_cols]>
// for the positions [p_begin, p_end) of [n_in * rows] (a worker's share).
// With `live` (packed bits [rows, live_row_bytes]: bit i of row r set where
// input i of sample r has a non-zero surrogate derivative), the positions
// whose bit is clear are 0 and cost no dot product: the listed backward, exact,
// because the gradient of a spike reaches its neuron only times that
// derivative (ipu_snn/neuron/spec.py).
template <typename T, typename G, typename Acc, typename I>
void grad_input_dense(const T* weight, I weight_stride, I n_cols, const G* grad_out, I grad_stride,
                      I rows, I p_begin, I p_end, T* partial, const uint8_t* live = nullptr,
                      I live_row_bytes = 0) {
  for (I p = p_begin; p < p_end; ++p) {
    const I i = p / rows, r = p % rows;
    if (live != nullptr && ((live[r * live_row_bytes + (i >> 3)] >> (i & 7)) & 1u) == 0) {
      partial[p] = T(0);
      continue;
    }
    partial[p] = T(dot<T, G, Acc>(weight + i * weight_stride, grad_out + r * grad_stride, n_cols));
  }
}

}  // namespace core
}  // namespace ipu_snn
