// Poplar vertices of the sparse spike matmul (Poplar SDK 3.x, compiled by popc).
//
// Every compute() is glue: it turns vertex fields into pointers and calls the
// shared core in custom_ops/include/spike_core.h, the same functions the CPU
// extension runs in CI. No arithmetic of its own lives here, so a bug fixed in
// the header is fixed on the IPU too.
//
// Decomposition (built by spike_matmul_op.cpp): a tile owns a contiguous slice
// of weight rows [rowBegin, rowEnd). Each tile receives the whole spike list
// (ids, counts; a few KiB), builds the neuron index of it in its own scratch,
// and walks only its own rows. Forward and sparse input-gradient vertices write
// per-tile partials that the op sums across tiles with popops::reduce; the
// weight-gradient vertex writes its row slice of the gradient directly.
//
// Field conventions: `weight` is the tile's row slice, flattened row-major
// ([rowEnd - rowBegin, numCols]); `offsets` has n_in + 1 slots (the neuron
// index covers all neurons, the vertex walks its own range of it); scratch
// fields are InOut so the vertex can write them before reading them.
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

// Forward, spikes @ weight restricted to the tile's rows:
// partial[b, c] = sum of weight[i, c] over listed i in [rowBegin, rowEnd).
// Sums are carried in float (core::forward_rows<T, float>), also for half.
template <typename T>
class SpikeMatmulForward : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<int>> ids;     // [B * capacity]
  poplar::Input<poplar::Vector<int>> counts;  // [B]
  poplar::Input<poplar::Vector<T>> weight;    // [rows, numCols], this tile's rows
  poplar::InOut<poplar::Vector<int>> offsets; // scratch [n_in + 1]
  poplar::InOut<poplar::Vector<int>> samples; // scratch [B * capacity]
  poplar::Output<poplar::Vector<float>> partial; // [B, numCols]
  unsigned capacity;
  unsigned rowBegin;
  unsigned rowEnd;
  unsigned numCols;

  bool compute() {
    for (unsigned j = 0; j < partial.size(); ++j) partial[j] = 0.0f;
    buildIndex(ids, counts, capacity, offsets, samples, nullptr);
    // offsets + rowBegin re-bases the index on the slice, so local row r is
    // global neuron rowBegin + r and weight[0] is the slice's first row.
    core::forward_rows<T, float>(&weight[0], numCols, &offsets[rowBegin],
                                 &samples[0], 0, rowEnd - rowBegin, 0, numCols,
                                 &partial[0], numCols);
    return true;
  }
};
template class SpikeMatmulForward<float>;
template class SpikeMatmulForward<half>;

// Weight gradient of the tile's rows, spikes^T @ grad_out:
// gradWeight[r, c] = sum of gradOut[b, c] over samples b listing rowBegin + r.
// Overwrites every element (rows nobody listed get 0). Written in float; the
// op casts to the weight type when that is half.
template <typename T>
class SpikeMatmulGradWeight : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<int>> ids;
  poplar::Input<poplar::Vector<int>> counts;
  poplar::Input<poplar::Vector<T>> gradOut;   // [B, numCols]
  poplar::InOut<poplar::Vector<int>> offsets;
  poplar::InOut<poplar::Vector<int>> samples;
  poplar::Output<poplar::Vector<float>> gradWeight; // [rows, numCols]
  unsigned capacity;
  unsigned rowBegin;
  unsigned rowEnd;
  unsigned numCols;

  bool compute() {
    buildIndex(ids, counts, capacity, offsets, samples, nullptr);
    core::grad_weight_rows<T, float>(&gradOut[0], numCols, &offsets[rowBegin],
                                     &samples[0], 0, rowEnd - rowBegin, 0,
                                     numCols, &gradWeight[0], numCols);
    return true;
  }
};
template class SpikeMatmulGradWeight<float>;
template class SpikeMatmulGradWeight<half>;

// Sparse input gradient at listed positions whose neuron is one of the tile's
// rows: partial[b * capacity + k] = <weight[ids[b, k]], gradOut[b]>, 0 at every
// other position. Exactly one tile owns each listed neuron, so summing the
// partials over tiles gives the op's [B, capacity] values.
template <typename T>
class SpikeMatmulGradInput : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<int>> ids;
  poplar::Input<poplar::Vector<int>> counts;  // listed counts (spikes + near)
  poplar::Input<poplar::Vector<T>> weight;    // [rows, numCols], this tile's rows
  poplar::Input<poplar::Vector<T>> gradOut;   // [B, numCols]
  poplar::InOut<poplar::Vector<int>> offsets;
  poplar::InOut<poplar::Vector<int>> samples;
  poplar::InOut<poplar::Vector<int>> slots;   // scratch [B * capacity]
  poplar::Output<poplar::Vector<T>> partial;  // [B * capacity]
  unsigned capacity;
  unsigned rowBegin;
  unsigned rowEnd;
  unsigned numCols;

  bool compute() {
    for (unsigned j = 0; j < partial.size(); ++j) partial[j] = T(0.0f);
    buildIndex(ids, counts, capacity, offsets, samples, &slots[0]);
    core::grad_input_rows<T, T, float>(&weight[0], numCols, numCols, &gradOut[0],
                                       numCols, &offsets[rowBegin], &samples[0],
                                       &slots[0], 0, rowEnd - rowBegin,
                                       &partial[0]);
    return true;
  }
};
template class SpikeMatmulGradInput<float>;
template class SpikeMatmulGradInput<half>;

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
