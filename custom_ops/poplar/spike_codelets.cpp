// Poplar vertices of the sparse spike matmul (Poplar SDK 3.x, compiled by popc).
//
// Every compute() is glue: it turns vertex fields into pointers, takes its
// worker's share (work_split.h) and calls the shared core in
// custom_ops/include/spike_core.h ("On a tile"), which the host harness runs
// against torch references in CI. No arithmetic of its own lives here, so a
// bug fixed in the header is fixed on the IPU too.
//
// Decomposition (the column split of
// tiling::splitEven, tile_split.hpp): a tile owns a contiguous range of postsynaptic
// neurons, the weight columns [colBegin, colEnd). Each tile receives the whole
// spike list (ids, counts; a few KiB, broadcast) and walks it sample by sample
// over its own columns. Forward output columns and weight-gradient columns are
// the tile's own, so they need no reduction; the sparse input gradient at the
// listed slots is a per-tile partial [B * capacity] that the op sums over the
// tiles, and that ScatterListed turns into dense rows [B, n_in] (one vertex
// per sample, on tile b mod tiles, as SpikeSelect).
//
// Workers: the matmul vertices and ScatterListed are MultiVertex, run by all
// of the tile's worker contexts at once; each worker owns whole output rows
// (samples or neurons) or a word-aligned range of elements, so no two write
// the same 32-bit word. SpikeSelect lists one sample's spikes in order, which
// one worker does.
//
// Field conventions: every [.., columns] field holds only the tile's columns,
// flattened row-major with row stride colEnd - colBegin (`weight` is
// [n_in, colEnd - colBegin], `gradOut` and `out` are [B, colEnd - colBegin]).
// A field the vertex reads back after writing it (an accumulator) is InOut:
// Poplar leaves reading an Output field undefined.
#include <poplar/HalfFloat.hpp>
#include <poplar/Vertex.hpp>

#include "spike_core.h"
#include "worker_share.hpp"

namespace core = ipu_snn::core;

// Forward, spikes @ weight for the tile's columns:
// out[b, c] = sum of weight[i, colBegin + c] over the ids i sample b lists.
// Each worker owns whole samples (output rows). Sums are carried and written
// in float (core::forward_samples<T, float>), also for half weights; the op
// casts.
template <typename T>
class SpikeMatmulForward : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<int>> ids;     // [B * capacity]
  poplar::Input<poplar::Vector<int>> counts;  // [B]
  poplar::Input<poplar::Vector<T>> weight;    // [n_in, width], this tile's columns
  poplar::InOut<poplar::Vector<float>> out;   // [B, width], zeroed, then summed into
  unsigned capacity;
  unsigned colBegin;
  unsigned colEnd;

  bool compute(unsigned worker) {
    const unsigned width = colEnd - colBegin;
    const core::Span<unsigned> samples = share<float>(counts.size(), numWorkers(), worker);
    core::forward_samples<T, float, unsigned>(&weight[0], width, &ids[0], &counts[0], capacity,
                                              samples.begin, samples.end, width, &out[0], width);
    return true;
  }
};
template class SpikeMatmulForward<float>;
template class SpikeMatmulForward<half>;

// Weight gradient of the tile's columns, spikes^T @ grad_out:
// gradWeight[i, c] = sum of gradOut[b, c] over the samples b that list i.
// Each worker owns whole weight rows (neurons) and overwrites them (rows
// nobody listed get 0). Written in float; the op casts to the weight's type.
template <typename T>
class SpikeMatmulGradWeight : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<int>> ids;
  poplar::Input<poplar::Vector<int>> counts;
  poplar::Input<poplar::Vector<T>> gradOut;          // [B, width], this tile's columns
  poplar::InOut<poplar::Vector<float>> gradWeight;   // [n_in, width], zeroed, then summed into
  unsigned capacity;
  unsigned colBegin;
  unsigned colEnd;

  bool compute(unsigned worker) {
    const unsigned width = colEnd - colBegin;
    const unsigned nIn = gradWeight.size() / width;
    const core::Span<unsigned> rows = share<float>(nIn, numWorkers(), worker);
    core::grad_weight_samples<T, float, unsigned>(&gradOut[0], width, &ids[0], &counts[0],
                                                  counts.size(), capacity, rows.begin,
                                                  rows.end, width, &gradWeight[0], width);
    return true;
  }
};
template class SpikeMatmulGradWeight<float>;
template class SpikeMatmulGradWeight<half>;

// The tile's share of the sparse input gradient at the listed positions:
// partial[b * capacity + k] = <weight[ids[b, k], own], gradOut[b, own]>, the
// dot product over the tile's columns only; 0 at unlisted positions. Summed
// over the tiles it is the op's values [B, capacity]. Each worker owns a
// word-aligned range of positions.
template <typename T>
class SpikeMatmulGradInput : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<int>> ids;
  poplar::Input<poplar::Vector<int>> counts;  // listed counts (spikes + near)
  poplar::Input<poplar::Vector<T>> weight;    // [n_in, width], this tile's columns
  poplar::Input<poplar::Vector<T>> gradOut;   // [B, width], this tile's columns
  poplar::Output<AlignedVector<T>> partial;   // [B * capacity]
  unsigned capacity;
  unsigned colBegin;
  unsigned colEnd;

  bool compute(unsigned worker) {
    const unsigned width = colEnd - colBegin;
    const core::Span<unsigned> positions = share<T>(partial.size(), numWorkers(), worker);
    core::grad_input_positions<T, T, float, unsigned>(
        &weight[0], width, width, &gradOut[0], width, &ids[0], &counts[0], capacity,
        positions.begin, positions.end, &partial[0]);
    return true;
  }
};
template class SpikeMatmulGradInput<float>;
template class SpikeMatmulGradInput<half>;

// One sample's sparse input gradient as a dense row (SpikeLinear's z
// gradient with dense_grad = 0): the summed SpikeMatmulGradInput values of the
// sample's listed neurons put back at those neurons, 0 at every other one.
// Each worker owns a word-aligned range of the row's neurons.
template <typename T>
class ScatterListed : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> values;  // [capacity], this sample's values
  poplar::Input<poplar::Vector<int>> ids;   // [capacity], this sample's list
  poplar::Input<int> count;                 // listed entries of the sample
  poplar::InOut<AlignedVector<T>> out;      // [n_in], zeroed, then added into

  bool compute(unsigned worker) {
    const core::Span<unsigned> neurons = share<T>(out.size(), numWorkers(), worker);
    core::scatter_listed_range<T, T, unsigned>(&values[0], &ids[0], *count, neurons.begin,
                                               neurons.end, &out[0]);
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
// the second threshold off. One worker: the list is written in order.
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
    const core::CompactCounts found = core::compact_row<unsigned char, unsigned char, unsigned>(
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
