// Poplar vertices of the sparse spike matmul (Poplar SDK 3.x, compiled by popc).
//
// Every compute() is glue: it turns vertex fields into pointers and calls the
// shared core in custom_ops/include/spike_core.h, the same functions the CPU
// extension runs in CI. No arithmetic of its own lives here, so a bug fixed in
// the header is fixed on the IPU too.
//
// Decomposition (built by spike_matmul_op.cpp, the column split of
// ipu_snn/ipu/tiles.py): a tile owns a contiguous range of postsynaptic
// neurons, the weight columns [colBegin, colEnd). Each tile receives the whole
// spike list (ids, counts; a few KiB, broadcast), builds the neuron index of it
// in its own scratch, and walks the listed rows restricted to its own columns.
// Forward output columns and weight-gradient columns are the tile's own, so
// they need no reduction; the sparse input gradient at the listed slots is a
// per-tile partial [B * capacity] that the op sums over the tiles, and that
// ScatterListed turns into dense rows [B, n_in] (one vertex per sample, on
// tile b mod tiles, as SpikeSelect).
//
// Field conventions: every [.., columns] field holds only the tile's columns,
// flattened row-major with row stride colEnd - colBegin (`weight` is
// [n_in, colEnd - colBegin], `gradOut` and `out` are [B, colEnd - colBegin]);
// `offsets` has n_in + 1 slots, so n_in is offsets.size() - 1; scratch fields
// are InOut so the vertex can write them before reading them.
#include <poplar/HalfFloat.hpp>
#include <poplar/Vertex.hpp>

#include "spike_core.h"

namespace core = ipu_snn::core;

// Builds the neuron index of the spike list into the vertex's scratch. Shared
// by all three matmul vertices; n_in is implied by the offsets field size.
template <typename Ids, typename Counts, typename Offsets, typename Samples>
inline void buildIndex(const Ids &ids, const Counts &counts, unsigned capacity,
                       Offsets &offsets, Samples &samples, int32_t *slots) {
  core::build_neuron_index(&ids[0], &counts[0], counts.size(), capacity,
                           static_cast<int64_t>(offsets.size()) - 1,
                           &offsets[0], &samples[0], slots);
}

// Forward, spikes @ weight for the tile's columns:
// out[b, c] = sum of weight[i, colBegin + c] over the ids i sample b lists.
// Sums are carried and written in float (core::forward_rows<T, float>), also
// for half weights; the op casts.
template <typename T>
class SpikeMatmulForward : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<int>> ids;     // [B * capacity]
  poplar::Input<poplar::Vector<int>> counts;  // [B]
  poplar::Input<poplar::Vector<T>> weight;    // [n_in, width], this tile's columns
  poplar::InOut<poplar::Vector<int>> offsets; // scratch [n_in + 1]
  poplar::InOut<poplar::Vector<int>> samples; // scratch [B * capacity]
  poplar::Output<poplar::Vector<float>> out;  // [B, width]
  unsigned capacity;
  unsigned colBegin;
  unsigned colEnd;

  bool compute() {
    const int64_t width = colEnd - colBegin;
    const int64_t nIn = static_cast<int64_t>(offsets.size()) - 1;
    for (unsigned j = 0; j < out.size(); ++j) out[j] = 0.0f;
    buildIndex(ids, counts, capacity, offsets, samples, nullptr);
    core::forward_rows<T, float>(&weight[0], width, &offsets[0], &samples[0], 0, nIn,
                                 0, width, &out[0], width);
    return true;
  }
};
template class SpikeMatmulForward<float>;
template class SpikeMatmulForward<half>;

// Weight gradient of the tile's columns, spikes^T @ grad_out:
// gradWeight[i, c] = sum of gradOut[b, c] over the samples b that list i.
// Overwrites every element (rows nobody listed get 0). Written in float; the
// op casts to the weight type when that is half.
template <typename T>
class SpikeMatmulGradWeight : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<int>> ids;
  poplar::Input<poplar::Vector<int>> counts;
  poplar::Input<poplar::Vector<T>> gradOut;   // [B, width], this tile's columns
  poplar::InOut<poplar::Vector<int>> offsets;
  poplar::InOut<poplar::Vector<int>> samples;
  poplar::Output<poplar::Vector<float>> gradWeight; // [n_in, width]
  unsigned capacity;
  unsigned colBegin;
  unsigned colEnd;

  bool compute() {
    const int64_t width = colEnd - colBegin;
    const int64_t nIn = static_cast<int64_t>(offsets.size()) - 1;
    buildIndex(ids, counts, capacity, offsets, samples, nullptr);
    core::grad_weight_rows<T, float>(&gradOut[0], width, &offsets[0], &samples[0], 0,
                                     nIn, 0, width, &gradWeight[0], width);
    return true;
  }
};
template class SpikeMatmulGradWeight<float>;
template class SpikeMatmulGradWeight<half>;

// The tile's share of the sparse input gradient at the listed positions:
// partial[b * capacity + k] = <weight[ids[b, k], own], gradOut[b, own]>, the
// dot product over the tile's columns only; 0 at unlisted positions. Summed
// over the tiles it is the op's values [B, capacity].
template <typename T>
class SpikeMatmulGradInput : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<int>> ids;
  poplar::Input<poplar::Vector<int>> counts;  // listed counts (spikes + near)
  poplar::Input<poplar::Vector<T>> weight;    // [n_in, width], this tile's columns
  poplar::Input<poplar::Vector<T>> gradOut;   // [B, width], this tile's columns
  poplar::InOut<poplar::Vector<int>> offsets;
  poplar::InOut<poplar::Vector<int>> samples;
  poplar::InOut<poplar::Vector<int>> slots;   // scratch [B * capacity]
  poplar::Output<poplar::Vector<T>> partial;  // [B * capacity]
  unsigned capacity;
  unsigned colBegin;
  unsigned colEnd;

  bool compute() {
    const int64_t width = colEnd - colBegin;
    const int64_t nIn = static_cast<int64_t>(offsets.size()) - 1;
    for (unsigned j = 0; j < partial.size(); ++j) partial[j] = T(0.0f);
    buildIndex(ids, counts, capacity, offsets, samples, &slots[0]);
    core::grad_input_rows<T, T, float>(&weight[0], width, width, &gradOut[0], width,
                                       &offsets[0], &samples[0], &slots[0], 0, nIn,
                                       &partial[0]);
    return true;
  }
};
template class SpikeMatmulGradInput<float>;
template class SpikeMatmulGradInput<half>;

// One sample's sparse input gradient as a dense row (SpikeLinear's z
// gradient with dense_grad = 0): the summed SpikeMatmulGradInput values of the
// sample's listed neurons put back at those neurons, 0 at every other one.
template <typename T>
class ScatterListed : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> values;  // [capacity], this sample's values
  poplar::Input<poplar::Vector<int>> ids;   // [capacity], this sample's list
  poplar::Input<int> count;                 // listed entries of the sample
  poplar::Output<poplar::Vector<T>> out;    // [n_in], the sample's gradient row

  bool compute() {
    core::scatter_listed_row<T, T>(&values[0], &ids[0], *count,
                                   static_cast<int64_t>(out.size()), &out[0]);
    return true;
  }
};
template class ScatterListed<float>;
template class ScatterListed<half>;

// Spike selection of one sample with two thresholds: neurons with
// membrane > threshold spike (the Heaviside of ipu_snn/neurons.py), neurons
// with membrane > nearThreshold that did not spike are near-threshold. Ids go
// to `ids` spikes first, then near-threshold ones (core::compact_row), and
// `counts` receives {spikes, near, dropped, near_dropped}. useNear = 0 turns
// the second threshold off.
template <typename T>
class SpikeSelect : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> membrane;               // [n]
  poplar::InOut<poplar::Vector<unsigned char>> spikeMask;  // scratch [n]
  poplar::InOut<poplar::Vector<unsigned char>> nearMask;   // scratch [n]
  poplar::Output<poplar::Vector<int>> ids;                 // [capacity]
  poplar::Output<poplar::Vector<int>> counts;              // [4]
  float threshold;
  float nearThreshold;
  unsigned useNear;

  bool compute() {
    const unsigned n = membrane.size();
    for (unsigned j = 0; j < n; ++j) {
      const float v = float(membrane[j]);
      spikeMask[j] = v > threshold ? 1 : 0;
      nearMask[j] = v > nearThreshold ? 1 : 0;
    }
    const core::CompactCounts found = core::compact_row<unsigned char, unsigned char>(
        &spikeMask[0], useNear ? &nearMask[0] : nullptr, n,
        static_cast<int32_t>(ids.size()), &ids[0]);
    counts[0] = found.spikes;
    counts[1] = found.near;
    counts[2] = found.dropped;
    counts[3] = found.near_dropped;
    return true;
  }
};
template class SpikeSelect<float>;
template class SpikeSelect<half>;
