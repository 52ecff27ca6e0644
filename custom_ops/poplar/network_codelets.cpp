// Poplar vertices that the network op (network_graph.cpp) adds to the spike
// and neuron vertices: the glue of a time loop run on the tiles. Compiled by
// popc into the same .gp as the others.
//
// Step indexing: a program::Repeat runs the same compute sets every step, so a
// vertex that reads or writes "step n" of a buffer takes the step counter (a
// one-element unsigned tensor that StepCount advances) as an Input and picks
// its slot itself: slot = step % slots.
#include <poplar/HalfFloat.hpp>
#include <poplar/Vertex.hpp>

#include "neuron_core.h"
#include "spike_core.h"
#include "worker_share.hpp"

namespace core = ipu_snn::core;

// out[b, c] += bias[c]: the bias added to a step's input current (the
// product vertices overwrite their output). Each worker owns a word-aligned share.
template <typename T>
class BiasRows : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> bias;         // [width]
  poplar::InOut<AlignedVector<float>> out;       // [B, width]

  bool compute(unsigned worker) {
    const unsigned width = bias.size();
    const core::Span<unsigned> mine = share<float>(out.size(), numWorkers(), worker);
    for (unsigned i = mine.begin; i < mine.end; ++i) out[i] += float(bias[i % width]);
    return true;
  }
};
template class BiasRows<float>;
template class BiasRows<half>;

// acc[c] += sum over r < rows of x[r * width + c], width = acc.size(): with
// rows = 1 an element-wise sum (weight gradients accumulated over the steps,
// gradients of z from several consumers), with rows = B a bias gradient.
// Each worker owns a word-aligned share of acc.
template <typename T>
class AccumulateRows : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> x;            // [rows, width]
  poplar::InOut<AlignedVector<float>> acc;       // [width]
  unsigned rows;

  bool compute(unsigned worker) {
    const unsigned width = acc.size();
    const core::Span<unsigned> mine = share<float>(width, numWorkers(), worker);
    for (unsigned c = mine.begin; c < mine.end; ++c) {
      float sum = acc[c];
      for (unsigned r = 0; r < rows; ++r) sum += float(x[r * width + c]);
      acc[c] = sum;
    }
    return true;
  }
};
template class AccumulateRows<float>;
template class AccumulateRows<half>;

// out[i] = sum over p of parts[p * len + i]: the per-tile partial input
// gradients of a product (SpikeMatmulGradInput), summed where they are used.
template <typename T>
class SumParts : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> parts;        // [numParts, len]
  poplar::Output<AlignedVector<T>> out;          // [len]
  unsigned numParts;

  bool compute(unsigned worker) {
    const unsigned len = out.size();
    const core::Span<unsigned> mine = share<T>(len, numWorkers(), worker);
    for (unsigned i = mine.begin; i < mine.end; ++i) {
      float sum = 0.0f;
      for (unsigned p = 0; p < numParts; ++p) sum += float(parts[p * len + i]);
      out[i] = T(sum);
    }
    return true;
  }
};
template class SumParts<float>;
template class SumParts<half>;

// dst[(step % slots) * len + i] = src[i]: one step into a buffer of slots steps
// (the tape, the output). One worker: the slot is chosen at run time.
template <typename T>
class StepStore : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> src;          // [len]
  poplar::InOut<poplar::Vector<T>> dst;          // [slots, len]
  poplar::Input<unsigned> step;
  unsigned slots;

  bool compute() {
    const unsigned len = src.size();
    const unsigned base = (*step % slots) * len;
    for (unsigned i = 0; i < len; ++i) dst[base + i] = src[i];
    return true;
  }
};
template class StepStore<float>;
template class StepStore<half>;

// dst[r * len + i] = src[(step % slots) * stepStride + r * rowStride + i],
// len = dst.size() / rows: one step's rows out of a buffer (the tape, the
// inputs [B, T, bytes], the output gradient).
template <typename T>
class StepLoad : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> src;
  poplar::Output<poplar::Vector<T>> dst;         // [rows, len]
  poplar::Input<unsigned> step;
  unsigned slots;
  unsigned rows;
  unsigned rowStride;
  unsigned stepStride;

  bool compute() {
    const unsigned len = dst.size() / rows;
    const unsigned base = (*step % slots) * stepStride;
    for (unsigned r = 0; r < rows; ++r)
      for (unsigned i = 0; i < len; ++i) dst[r * len + i] = src[base + r * rowStride + i];
    return true;
  }
};
template class StepLoad<float>;
template class StepLoad<half>;
template class StepLoad<unsigned char>;

// The spike list of one sample's packed input bits (bit j % 8 of byte j / 8),
// ascending: core::unpack_bit into a mask, then core::compact_row, which
// writes every slot of ids (0 past the count).
class BitsToList : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<unsigned char>> bits;  // [ceil(numNeurons / 8)]
  poplar::InOut<poplar::Vector<unsigned char>> mask;  // scratch [numNeurons]
  poplar::Output<poplar::Vector<int>> ids;            // [capacity]
  poplar::Output<int> count;
  unsigned numNeurons;

  bool compute() {
    for (unsigned j = 0; j < numNeurons; ++j) mask[j] = core::unpack_bit(&bits[0], j) ? 1 : 0;
    const core::CompactCounts found = core::compact_row<unsigned char, unsigned char, unsigned>(
        &mask[0], nullptr, numNeurons, static_cast<int32_t>(ids.size()), &ids[0]);
    *count = found.spikes;
    return true;
  }
};

// step += delta: the time loop's step counter (delta -1 in the backward sweep).
class StepCount : public poplar::Vertex {
public:
  poplar::InOut<unsigned> step;
  int delta;

  bool compute() {
    *step = unsigned(int(*step) + delta);
    return true;
  }
};

// out = 0: accumulators and state at the start of a sweep.
template <typename T>
class ZeroFill : public poplar::MultiVertex {
public:
  poplar::Output<AlignedVector<T>> out;

  bool compute(unsigned worker) {
    const core::Span<unsigned> mine = share<T>(out.size(), numWorkers(), worker);
    for (unsigned i = mine.begin; i < mine.end; ++i) out[i] = T(0.0f);
    return true;
  }
};
template class ZeroFill<float>;
template class ZeroFill<half>;
