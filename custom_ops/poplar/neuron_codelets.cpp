// Poplar vertices of the fused LIF/ALIF neuron step (Poplar SDK 3.x, compiled
// by popc into the same spike_codelets.gp as spike_codelets.cpp).
//
// Like the matmul vertices, every compute() is glue around the shared core,
// custom_ops/include/neuron_core.h (neuron_forward, pack_bits, unpack_bits,
// neuron_backward), which the CPU extension runs in CI.
//
// Decomposition (built by neuron_step_op.cpp): a tile owns the neurons
// [colBegin, colEnd) of the layer, the same columns the spike-matmul split
// gives it, so the input current arrives where it was computed. Its [B, N]
// fields hold only its own columns, flattened to [B, width] with
// width = colEnd - colBegin, and beta, rho hold its [width] decays: a tile's
// block is itself a small [B, width] step, which is what the core's element
// range [0, B * width) with per-neuron index element % width expects.
//
// Packed spikes (uint8 [B, ceil(N / 8)], bit j % 8 of byte j / 8) are the one
// place where a tile boundary need not fall on a byte boundary. Each byte is
// written by the tile that owns its first neuron (PackSpikes, after the step);
// the backward vertex reads the bytes that overlap its columns and re-packs its
// own bits into a tile-local [B, ceil(width / 8)] array before calling the core.
//
// LIF or ALIF: `adaptive` = 0 is LIF; aPrev and rho are then not read and
// aNew / gradAPrev are written as 0 (LIF has a = 0), so one op signature
// serves both kinds.
#include <poplar/HalfFloat.hpp>
#include <poplar/Vertex.hpp>

#include "neuron_core.h"

namespace core = ipu_snn::core;

// The scalars of a step as the core takes them, from the vertex fields.
inline core::NeuronScalars neuronScalars(float threshold, float adaptStrength,
                                         unsigned reset, unsigned surrogate, float scale) {
  return core::NeuronScalars{threshold, adaptStrength, static_cast<core::Reset>(reset),
                             static_cast<core::SurrogateKind>(surrogate), scale};
}

// One step forward over the tile's neurons: v_new, a_new (ALIF), z (0/1) and
// the surrogate derivative d, all [B, width], d saved in T.
template <typename T>
class NeuronForward : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> current;  // [B, width]
  poplar::Input<poplar::Vector<T>> vPrev;    // [B, width]
  poplar::Input<poplar::Vector<T>> aPrev;    // [B, width] (ALIF)
  poplar::Input<poplar::Vector<T>> beta;     // [width]
  poplar::Input<poplar::Vector<T>> rho;      // [width] (ALIF)
  poplar::Output<poplar::Vector<T>> vNew;    // [B, width]
  poplar::Output<poplar::Vector<T>> aNew;    // [B, width]
  poplar::Output<poplar::Vector<T>> z;       // [B, width]
  poplar::Output<poplar::Vector<T>> d;       // [B, width]
  float threshold;
  float adaptStrength;
  float scale;
  unsigned reset;      // core::Reset
  unsigned surrogate;  // core::SurrogateKind
  unsigned adaptive;   // 0: LIF, 1: ALIF
  unsigned colBegin;
  unsigned colEnd;

  bool compute() {
    const int64_t width = colEnd - colBegin;
    const int64_t elements = current.size();
    const core::NeuronScalars s =
        neuronScalars(threshold, adaptStrength, reset, surrogate, scale);
    core::neuron_forward<T, T>(&current[0], &vPrev[0], adaptive ? &aPrev[0] : nullptr,
                               &beta[0], adaptive ? &rho[0] : nullptr, width, 0, elements,
                               s, &vNew[0], adaptive ? &aNew[0] : nullptr, &z[0], &d[0]);
    if (!adaptive) {
      for (unsigned i = 0; i < aNew.size(); ++i) aNew[i] = T(0.0f);
    }
    return true;
  }
};
template class NeuronForward<float>;
template class NeuronForward<half>;

// Packs spikes into the bytes a tile writes: z holds the columns
// [8 * firstByte, min(8 * endByte, N)) of every sample (numNeurons of them,
// starting on a byte boundary), bits the bytes [firstByte, endByte) of every
// row, so the block is itself a packed [B, numNeurons] step.
template <typename T>
class PackSpikes : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> z;                   // [B, numNeurons]
  poplar::Output<poplar::Vector<unsigned char>> bits;   // [B, ceil(numNeurons / 8)]
  unsigned numNeurons;

  bool compute() {
    core::pack_bits<T>(&z[0], numNeurons, 0, bits.size(), &bits[0]);
    return true;
  }
};
template class PackSpikes<float>;
template class PackSpikes<half>;

// One step backward over the tile's neurons. bits holds, for every sample, the
// packed bytes [colBegin / 8, ceil(colEnd / 8)) (rowBytes of them), which
// start up to 7 neurons before colBegin. Each row's own spikes are unpacked
// (core::unpack_bits) and re-packed tile-locally (core::pack_bits), so
// core::neuron_backward sees a plain [B, width] step.
template <typename T>
class NeuronBackward : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<T>> gradZ;              // [B, width]
  poplar::Input<poplar::Vector<T>> gradV;              // [B, width]
  poplar::Input<poplar::Vector<T>> gradA;              // [B, width] (ALIF)
  poplar::Input<poplar::Vector<unsigned char>> bits;   // [B, rowBytes]
  poplar::Input<poplar::Vector<T>> d;                  // [B, width]
  poplar::Input<poplar::Vector<T>> beta;               // [width]
  poplar::Input<poplar::Vector<T>> rho;                // [width] (ALIF)
  poplar::Output<poplar::Vector<T>> gradCurrent;       // [B, width]
  poplar::Output<poplar::Vector<T>> gradVPrev;         // [B, width]
  poplar::Output<poplar::Vector<T>> gradAPrev;         // [B, width]
  poplar::InOut<poplar::Vector<unsigned char>> spikeRow;  // scratch [8 * rowBytes]
  poplar::InOut<poplar::Vector<unsigned char>> ownBits;   // scratch [B, ceil(width / 8)]
  float adaptStrength;
  unsigned reset;     // core::Reset
  unsigned adaptive;  // 0: LIF, 1: ALIF
  unsigned colBegin;
  unsigned colEnd;

  bool compute() {
    const int64_t width = colEnd - colBegin;
    const int64_t elements = gradZ.size();
    const int64_t batch = elements / width;
    const int64_t rowBytes = bits.size() / batch;
    const int64_t ownRowBytes = core::packed_row_bytes(width);
    const int64_t offset = colBegin % 8;  // first own neuron within the first byte
    for (int64_t b = 0; b < batch; ++b) {
      core::unpack_bits<unsigned char>(&bits[b * rowBytes], 8 * rowBytes, offset,
                                       offset + width, &spikeRow[0]);
      core::pack_bits<unsigned char>(&spikeRow[offset], width, 0, ownRowBytes,
                                     &ownBits[b * ownRowBytes]);
    }
    core::LeakBackward<T> leak;
    leak.beta = &beta[0];
    leak.rho = adaptive ? &rho[0] : nullptr;
    leak.grad_v_prev = &gradVPrev[0];
    leak.grad_a_prev = adaptive ? &gradAPrev[0] : nullptr;
    core::neuron_backward<T, T>(&gradZ[0], &gradV[0], adaptive ? &gradA[0] : nullptr,
                                &ownBits[0], &d[0], width, 0, elements, adaptive != 0,
                                adaptStrength, static_cast<core::Reset>(reset),
                                &gradCurrent[0], nullptr, leak);
    if (!adaptive) {
      for (unsigned i = 0; i < gradAPrev.size(); ++i) gradAPrev[i] = T(0.0f);
    }
    return true;
  }
};
template class NeuronBackward<float>;
template class NeuronBackward<half>;
