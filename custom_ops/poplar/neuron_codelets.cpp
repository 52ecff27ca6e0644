// Poplar vertices of the fused LIF/ALIF neuron step (Poplar SDK 3.x, compiled
// by popc into the same ipu_snn_codelets.gp as network_codelets.cpp).
//
// Like the network vertices, every compute() is glue around the shared core,
// custom_ops/include/neuron_core.h (neuron_forward, pack_bits, repack_bits,
// neuron_backward), which the CPU extension runs in CI, called with a tile's
// types: unsigned indices and float scalars.
//
// Decomposition (network_graph.cpp): a tile owns the neurons
// [colBegin, colEnd) of the layer, the same columns the spike-matmul split
// gives it, so the input current arrives where it was computed. Its [B, N]
// fields hold only its own columns, flattened to [B, width] with
// width = colEnd - colBegin, and beta, rho hold its [width] decays: a tile's
// block is itself a small [B, width] step, which is what the core's element
// range [0, B * width) with per-neuron index element % width expects.
//
// Workers: every vertex here is a MultiVertex; each of the tile's worker
// contexts takes a share of the elements (or bytes) in whole 32-bit words, so
// no two write the same word (a half or a byte is not stored on its own).
//
// Packed spikes (uint8 [B, ceil(N / 8)], bit j % 8 of byte j / 8) are the one
// place where a tile boundary need not fall on a byte boundary. Each byte is
// written by the tile that owns its first neuron (PackSpikes, after the step);
// the backward vertex reads the bytes that overlap its columns and re-packs its
// own bits tile-locally, [rows, ceil(width / 8)], before calling the core.
//
// The neuron model: `kind` is core::NeuronKind (0 LIF, 1 ALIF, 2 CUBA). For
// LIF aPrev and rho are not read and aNew / gradAPrev are written as 0 (LIF
// has a = 0), so one vertex signature serves every kind; for CUBA a is the
// synaptic current and rho its decay.
#include <poplar/HalfFloat.hpp>
#include <poplar/Vertex.hpp>

#include "neuron_core.h"
#include "worker_share.hpp"

namespace core = ipu_snn::core;

// One step forward over the tile's neurons: v_new, a_new (ALIF), z (0/1) and
// the surrogate derivative d, all [B, width], d saved in T.
template <typename T>
class NeuronForward : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> current;  // [B, width]
  poplar::Input<poplar::Vector<T>> vPrev;    // [B, width]
  poplar::Input<poplar::Vector<T>> aPrev;    // [B, width] (ALIF)
  poplar::Input<poplar::Vector<T>> beta;     // [width]
  poplar::Input<poplar::Vector<T>> rho;      // [width] (ALIF)
  poplar::Output<AlignedVector<T>> vNew;     // [B, width]
  poplar::Output<AlignedVector<T>> aNew;     // [B, width]
  poplar::Output<AlignedVector<T>> z;        // [B, width]
  poplar::Output<AlignedVector<T>> d;        // [B, width]
  poplar::Input<poplar::Vector<T>> thresholds;  // [width]: per-neuron thresholds (perNeuron)
  float threshold;
  float adaptStrength;
  float scale;
  unsigned reset;      // core::Reset
  unsigned surrogate;  // core::SurrogateKind
  unsigned kind;       // core::NeuronKind
  unsigned perNeuron;  // 1: thresholds (a learned one) in place of threshold
  unsigned colBegin;
  unsigned colEnd;

  bool compute(unsigned worker) {
    const unsigned width = colEnd - colBegin;
    const core::Span<unsigned> mine = share<T>(current.size(), numWorkers(), worker);
    const core::NeuronScalarsT<float> s{threshold, adaptStrength,
                                        static_cast<core::Reset>(reset),
                                        static_cast<core::SurrogateKind>(surrogate), scale,
                                        static_cast<core::NeuronKind>(kind)};
    const bool adaptive = kind != 0;  // a second state (ALIF, CUBA)
    if (perNeuron)
      core::neuron_forward<T, T>(&current[0], &vPrev[0], adaptive ? &aPrev[0] : nullptr,
                                 &beta[0], adaptive ? &rho[0] : nullptr, width, mine.begin,
                                 mine.end, s, &vNew[0], adaptive ? &aNew[0] : nullptr, &z[0],
                                 &d[0], &thresholds[0]);
    else
      core::neuron_forward<T, T>(&current[0], &vPrev[0], adaptive ? &aPrev[0] : nullptr,
                                 &beta[0], adaptive ? &rho[0] : nullptr, width, mine.begin,
                                 mine.end, s, &vNew[0], adaptive ? &aNew[0] : nullptr, &z[0],
                                 &d[0]);
    if (!adaptive) {
      for (unsigned i = mine.begin; i < mine.end; ++i) aNew[i] = T(0.0f);
    }
    return true;
  }
};
template class NeuronForward<float>;
template class NeuronForward<half>;

// Packs spikes into the bytes a tile writes: z holds the columns
// [8 * firstByte, min(8 * endByte, N)) of every sample (numNeurons of them,
// starting on a byte boundary), bits the bytes [firstByte, endByte) of every
// row, so the block is itself a packed [B, numNeurons] step. Each worker packs
// whole words of bytes.
template <typename T>
class PackSpikes : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> z;                   // [B, numNeurons]
  poplar::Output<AlignedVector<unsigned char>> bits;    // [B, ceil(numNeurons / 8)]
  unsigned numNeurons;

  bool compute(unsigned worker) {
    const core::Span<unsigned> mine = share<unsigned char>(bits.size(), numWorkers(), worker);
    core::pack_bits<T, unsigned>(&z[0], numNeurons, mine.begin, mine.end, &bits[0]);
    return true;
  }
};
template class PackSpikes<float>;
template class PackSpikes<half>;

// One step backward over the tile's neurons. bits holds, for every sample, the
// packed bytes [colBegin / 8, ceil(colEnd / 8)) (rowBytes of them), which
// start up to 7 neurons before colBegin. Each worker owns whole rows (samples),
// in word-sized groups; it re-packs its rows' own spikes into its slice of
// ownBits (core::repack_bits), so that core::neuron_backward sees a plain
// [rows, width] step.
template <typename T>
class NeuronBackward : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> gradZ;              // [B, width]
  poplar::Input<poplar::Vector<T>> gradV;              // [B, width]
  poplar::Input<poplar::Vector<T>> gradA;              // [B, width] (ALIF)
  poplar::Input<poplar::Vector<unsigned char>> bits;   // [B, rowBytes]
  poplar::Input<poplar::Vector<T>> d;                  // [B, width]
  poplar::Input<poplar::Vector<T>> beta;               // [width]
  poplar::Input<poplar::Vector<T>> rho;                // [width] (ALIF)
  poplar::Output<AlignedVector<T>> gradCurrent;        // [B, width]
  poplar::Output<AlignedVector<T>> gradVPrev;          // [B, width]
  poplar::Output<AlignedVector<T>> gradAPrev;          // [B, width]
  // CUBA: gv, the gradient of v before the reset (gradCurrent is then the
  // synaptic current's, ga); other kinds leave it unwritten.
  poplar::InOut<AlignedVector<T>> gradVPre;            // [B, width]
  // Scratch: one word-aligned slice of ownSlice bytes per worker, for its rows
  // packed tile-locally (core::packed_slice_bytes of its most rows).
  poplar::InOut<AlignedVector<unsigned char>> ownBits;
  float adaptStrength;
  unsigned reset;     // core::Reset
  unsigned kind;      // core::NeuronKind
  unsigned colBegin;
  unsigned colEnd;
  unsigned ownSlice;

  bool compute(unsigned worker) {
    const unsigned width = colEnd - colBegin;
    const unsigned batch = gradZ.size() / width;
    const core::Span<unsigned> rows =
        core::worker_span<unsigned>(batch, numWorkers(), worker, core::kWordItems<T>);
    if (rows.begin == rows.end) return true;
    const unsigned rowBytes = bits.size() / batch;
    unsigned char *own = &ownBits[worker * ownSlice];
    core::repack_bits<unsigned>(&bits[rows.begin * rowBytes], rowBytes, colBegin % 8, width,
                                rows.end - rows.begin, own);
    // The worker's rows as a step of their own: every pointer starts at its first row.
    const unsigned first = rows.begin * width, count = (rows.end - rows.begin) * width;
    // the op's outputs are the gradients w.r.t. the previous step: the leak's backward is fused in
    const bool adaptive = kind != 0, cuba = kind == unsigned(core::NeuronKind::kCuba);
    core::LeakBackward<T> leak;
    leak.beta = &beta[0];
    leak.rho = adaptive ? &rho[0] : nullptr;
    leak.grad_v_prev = &gradVPrev[first];
    leak.grad_a_prev = adaptive ? &gradAPrev[first] : nullptr;
    // the input current's gradient: gv (LIF, ALIF), or CUBA's ga (its current enters a)
    core::neuron_backward_of<T, T>(static_cast<core::NeuronKind>(kind), &gradZ[first], &gradV[first],
                                   adaptive ? &gradA[first] : nullptr, own, &d[first], width, 0u,
                                   count, adaptStrength, static_cast<core::Reset>(reset),
                                   cuba ? &gradVPre[first] : &gradCurrent[first],
                                   cuba ? &gradCurrent[first] : nullptr, leak);
    if (!adaptive) {
      for (unsigned i = first; i < first + count; ++i) gradAPrev[i] = T(0.0f);
    }
    return true;
  }
};
template class NeuronBackward<float>;
template class NeuronBackward<half>;
