// Poplar vertices that the network op (network_graph.cpp) adds to the neuron
// vertices: the glue of a time loop run on the tiles. Compiled by popc into
// the same .gp as neuron_codelets.cpp.
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

// acc[c] += sum over r of x[r * width + c] y[r * width + c], width = acc.size():
// a learned decay's gradient over a step (gv times v(t - 1)). Each worker owns
// a word-aligned share of acc.
template <typename T>
class AccumulateProducts : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> x;            // [rows, width]
  poplar::Input<poplar::Vector<T>> y;            // [rows, width]
  poplar::InOut<AlignedVector<float>> acc;       // [width]

  bool compute(unsigned worker) {
    const unsigned width = acc.size(), rows = x.size() / width;
    const core::Span<unsigned> mine = share<float>(width, numWorkers(), worker);
    for (unsigned c = mine.begin; c < mine.end; ++c) {
      float sum = acc[c];
      for (unsigned r = 0; r < rows; ++r) sum += float(x[r * width + c]) * float(y[r * width + c]);
      acc[c] = sum;
    }
    return true;
  }
};
template class AccumulateProducts<float>;
template class AccumulateProducts<half>;

// A learned threshold's gradient over a step, accumulated
// (core::threshold_grad_columns): bits holds, for every sample, the packed
// bytes [colBegin / 8, ceil(colEnd / 8)) of the step's spikes, which start
// colBegin % 8 neurons before the tile's first. Each worker owns whole columns.
template <typename T>
class ThresholdGrad : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> gradVNew;             // [B, width]: w.r.t. v after the reset
  poplar::Input<poplar::Vector<T>> gradV;                // [B, width]: w.r.t. v before it
  poplar::Input<poplar::Vector<unsigned char>> bits;     // [B, rowBytes]
  poplar::InOut<poplar::Vector<float>> gradThreshold;    // [width]
  unsigned colBegin;

  bool compute(unsigned worker) {
    const unsigned width = gradThreshold.size(), batch = gradV.size() / width;
    const core::Span<unsigned> mine = core::worker_span<unsigned>(width, numWorkers(), worker, 1u);
    core::threshold_grad_columns<T, float, unsigned>(&gradVNew[0], &gradV[0], &bits[0], bits.size() / batch,
                                                     colBegin % 8, width, batch, mine.begin, mine.end,
                                                     &gradThreshold[0]);
    return true;
  }
};
template class ThresholdGrad<float>;
template class ThresholdGrad<half>;

// out[i] = sum over p of parts[p * len + i]: the per-tile partial input
// gradients of a product (DenseGradInput, ListedGradInput), summed where they are used.
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
template class StepStore<unsigned char>;

// dst[r * len + i] = src[((step + offset) % slots) * stepStride + r * rowStride + i],
// len = dst.size() / rows: one step's rows out of a buffer (the tape, the
// inputs [B, T, bytes], the output gradient; offset slots - 1: the step before).
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
  unsigned offset;

  bool compute() {
    const unsigned len = dst.size() / rows;
    const unsigned base = ((*step + offset) % slots) * stepStride;
    for (unsigned r = 0; r < rows; ++r)
      for (unsigned i = 0; i < len; ++i) dst[r * len + i] = src[base + r * rowStride + i];
    return true;
  }
};
template class StepLoad<float>;
template class StepLoad<half>;
template class StepLoad<unsigned char>;

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
template class ZeroFill<unsigned char>;

// A step's input current of the tile's neurons from spikes as packed bits:
// out[b, c] = bias[c] + sum of weight[i, c] over the bits i set in bits[b]
// (+ the same over bitsRec with weightRec where recurrent). Each worker owns
// whole samples (core::add_rows_of_bits).
template <typename T>
class BitsMatmulForward : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<unsigned char>> bits;     // [B, rowBytes]
  poplar::Input<poplar::Vector<T>> weight;               // [numInputs, width]
  poplar::Input<poplar::Vector<unsigned char>> bitsRec;  // [B, rowBytesRec] (recurrent)
  poplar::Input<poplar::Vector<T>> weightRec;            // [numRec, width] (recurrent)
  poplar::Input<poplar::Vector<T>> bias;                 // [width]
  poplar::Output<AlignedVector<float>> out;              // [B, width]
  unsigned numInputs;
  unsigned numRec;  // 0: not recurrent (bitsRec, weightRec not read)

  bool compute(unsigned worker) {
    const unsigned width = bias.size(), batch = out.size() / width;
    const unsigned rowBytes = bits.size() / batch;
    const core::Span<unsigned> samples = share<float>(batch, numWorkers(), worker);
    for (unsigned b = samples.begin; b < samples.end; ++b) {
      float *row = &out[b * width];
      for (unsigned c = 0; c < width; ++c) row[c] = float(bias[c]);
      core::add_rows_of_bits<T, float, unsigned>(&weight[0], width, width, &bits[b * rowBytes], numInputs, row);
      if (numRec > 0)
        core::add_rows_of_bits<T, float, unsigned>(&weightRec[0], width, width,
                                                   &bitsRec[b * (bitsRec.size() / batch)], numRec, row);
    }
    return true;
  }
};
template class BitsMatmulForward<float>;
template class BitsMatmulForward<half>;

// gradWeight[i, c] += sum of gradOut[b, c] over the samples b whose bit i is
// set: a step's weight gradient of the tile's columns, accumulated. Each
// worker owns whole weight rows (core::grad_weight_bits).
template <typename T>
class BitsMatmulGradWeight : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<unsigned char>> bits;  // [B, rowBytes]
  poplar::Input<poplar::Vector<T>> gradOut;           // [B, width]
  poplar::InOut<AlignedVector<float>> gradWeight;     // [numInputs, width]
  unsigned numInputs;

  bool compute(unsigned worker) {
    const unsigned width = gradWeight.size() / numInputs, batch = gradOut.size() / width;
    const core::Span<unsigned> rows = share<float>(numInputs, numWorkers(), worker);
    core::grad_weight_bits<T, float, unsigned>(&gradOut[0], width, width, &bits[0], bits.size() / batch, batch,
                                               rows.begin, rows.end, &gradWeight[0], width);
    return true;
  }
};
template class BitsMatmulGradWeight<float>;
template class BitsMatmulGradWeight<half>;

// The tile's share of a product's dense input gradient for the samples
// [rowBegin, rowBegin + rows), neuron-major: partial[i * rows + r] =
// <weight[i, :], gradOut[rowBegin + r, :]> over the tile's columns. Summed
// over the tiles (SumParts, ReduceSlices) it is the gradient of the input.
template <typename T>
class DenseGradInput : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> weight;    // [numInputs, width]
  poplar::Input<poplar::Vector<T>> gradOut;   // [rows, width]: the pass's samples
  poplar::Output<AlignedVector<T>> partial;   // [numInputs, rows]
  unsigned numInputs;

  bool compute(unsigned worker) {
    const unsigned width = weight.size() / numInputs, rows = gradOut.size() / width;
    const core::Span<unsigned> mine = share<T>(partial.size(), numWorkers(), worker);
    core::grad_input_dense<T, T, float, unsigned>(&weight[0], width, width, &gradOut[0], width, rows, mine.begin,
                                                  mine.end, &partial[0]);
    return true;
  }
};
template class DenseGradInput<float>;
template class DenseGradInput<half>;

// DenseGradInput's listed twin: the positions of inputs whose surrogate
// derivative is 0 at that sample (their bit in `live` clear) are 0 and cost no
// dot product (core::grad_input_dense with a mask). Exact: such an input's
// gradient is multiplied by that 0 in its own backward.
template <typename T>
class ListedGradInput : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> weight;              // [numInputs, width]
  poplar::Input<poplar::Vector<T>> gradOut;             // [rows, width]: the pass's samples
  poplar::Input<poplar::Vector<unsigned char>> live;    // [rows, ceil(numInputs / 8)]: d != 0, as bits
  poplar::Output<AlignedVector<T>> partial;             // [numInputs, rows]
  unsigned numInputs;

  bool compute(unsigned worker) {
    const unsigned width = weight.size() / numInputs, rows = gradOut.size() / width;
    const core::Span<unsigned> mine = share<T>(partial.size(), numWorkers(), worker);
    core::grad_input_dense<T, T, float, unsigned>(&weight[0], width, width, &gradOut[0], width, rows, mine.begin,
                                                  mine.end, &partial[0], &live[0], live.size() / rows);
    return true;
  }
};
template class ListedGradInput<float>;
template class ListedGradInput<half>;

// out[(rowBegin + r) * width + i] = sum over p of parts[p * width * rows + i * rows + r]:
// neuron-major partial sums of a pass (rows samples) summed into the rows
// [rowBegin, rowBegin + rows) of a [B, width] gradient; other rows are kept.
// Each worker owns whole neurons.
template <typename T>
class ReduceSlices : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> parts;   // [numParts, width, rows]
  poplar::InOut<poplar::Vector<T>> out;     // [B, width]
  unsigned numParts;
  unsigned width;
  unsigned rowBegin;

  bool compute(unsigned worker) {
    const unsigned rows = parts.size() / (numParts * width), len = width * rows;
    const core::Span<unsigned> mine = core::worker_span<unsigned>(width, numWorkers(), worker, 1u);
    for (unsigned i = mine.begin; i < mine.end; ++i)
      for (unsigned r = 0; r < rows; ++r) {
        float sum = 0.0f;
        for (unsigned p = 0; p < numParts; ++p) sum += float(parts[p * len + i * rows + r]);
        out[(rowBegin + r) * width + i] = T(sum);
      }
    return true;
  }
};
template class ReduceSlices<float>;
template class ReduceSlices<half>;

// The leaky-integrator readout's step: vNew[b, c] = beta[c] vPrev[b, c] + current[b, c].
template <typename T>
class LeakyIntegrate : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<float>> current;  // [B, width]
  poplar::Input<poplar::Vector<T>> vPrev;        // [B, width]
  poplar::Input<poplar::Vector<T>> beta;         // [width]
  poplar::Output<AlignedVector<T>> vNew;         // [B, width]

  bool compute(unsigned worker) {
    const unsigned width = beta.size();
    const core::Span<unsigned> mine = share<T>(vNew.size(), numWorkers(), worker);
    for (unsigned i = mine.begin; i < mine.end; ++i)
      vNew[i] = T(float(beta[i % width]) * float(vPrev[i]) + current[i]);
    return true;
  }
};
template class LeakyIntegrate<float>;
template class LeakyIntegrate<half>;

// The readout's step backward: g = gradOut + beta * carried (the gradient of
// v(t) from the trace and from v(t + 1)); gradCurrent = g, carried = g, and the
// decay's and bias's gradients += sum over samples of g v(t - 1) and of g.
// Each worker owns whole neurons (columns).
template <typename T>
class LeakyIntegrateBackward : public poplar::MultiVertex {
public:
  poplar::Input<poplar::Vector<T>> gradOut;     // [B, width]: the trace's gradient at t
  poplar::Input<poplar::Vector<T>> vPrev;       // [B, width]: v(t - 1)
  poplar::Input<poplar::Vector<T>> beta;        // [width]
  poplar::InOut<poplar::Vector<T>> carried;     // [B, width]: the gradient of v(t + 1), then of v(t)
  poplar::Output<poplar::Vector<T>> gradCurrent;  // [B, width]
  poplar::InOut<poplar::Vector<float>> gradBeta;  // [width]
  poplar::InOut<poplar::Vector<float>> gradBias;  // [width]

  bool compute(unsigned worker) {
    const unsigned width = beta.size(), batch = gradOut.size() / width;
    const core::Span<unsigned> mine = core::worker_span<unsigned>(width, numWorkers(), worker, 1u);
    for (unsigned c = mine.begin; c < mine.end; ++c) {
      float gb = gradBeta[c], gbias = gradBias[c];
      for (unsigned b = 0; b < batch; ++b) {
        const unsigned i = b * width + c;
        const float g = float(gradOut[i]) + float(beta[c]) * float(carried[i]);
        carried[i] = T(g);
        gradCurrent[i] = T(g);
        gb += g * float(vPrev[i]);
        gbias += g;
      }
      gradBeta[c] = gb;
      gradBias[c] = gbias;
    }
    return true;
  }
};
template class LeakyIntegrateBackward<float>;
template class LeakyIntegrateBackward<half>;
