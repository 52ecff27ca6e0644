// The network op's graph: plain functions over a poplar::Graph (Poplar only)
// that build every spiking layer and the leaky-integrator readout over T
// steps: tensors, vertices, tile mappings and programs. The PopART op and grad
// op are wrappers that call buildNetwork, the op for the forward pass over its
// inputs (laid out by createInput), the grad op for the backward pass over the
// inputs and the forward's carried state (nothing copied); the host interpreter
// (ipu_snn/ipu/interpreter.py) runs the very same graph, and `ipu-snn plan
// --device ipu-mk2` counts it (a counting graph that holds no data).
//
// The op's output is the readout's membrane trace float [T, B, n_out] (the
// readout runs inside the op); the loss and the readout's reduction over time
// stay outside (PopTorch). Its grad op takes the trace's gradient and returns
// the gradients of every weight and bias, and of the readout's decay.
//
// Layout: each population (a spiking layer, the readout) takes its own tile
// range (layerTiles), its neurons split over it (tiling::splitEven); a tile
// holds its neurons' weight columns, bias, decay, state and gradient
// accumulators, and the BPTT tape of its neurons (the surrogate derivative d,
// and the spikes as bits). A layer's spikes of a step are packed bits
// uint8 [B, ceil(n / 8)], byte k on the tile owning neuron 8k; every consumer
// tile reads them whole (no spike list, no capacity). The input gradient of a
// product is formed per tile for `samplesPerPass` samples at a time and summed
// over the tiles in two stages (groups of about sqrt(tiles)). Inputs are
// packed bits uint8 [B, T, ceil(n_in / 8)], sample b on layer 0's tile
// b mod its tiles. The trace and its gradient are spread over every tile
// ([T, k] per tile for k of the B * n_out (sample, neuron) pairs).
//
// Programs: `forward` runs the schedule's actions up to its first Reverse,
// `backward` the rest. Advance(n0, n1) is a program::Repeat of one step's
// compute sets (a step counter selects the input, tape and output slots);
// runs of Reverse(n), Reverse(n - 1), ... a Repeat of one backward step;
// Store/Load copy the state to and from a local slot on the tiles, or a row of
// a poplar::RemoteBuffer in streaming memory (offchip).
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <poplar/Graph.hpp>
#include <poplar/Program.hpp>

namespace ipu_snn {
namespace network {

struct LayerSpec {
  unsigned size = 0;
  bool recurrent = false;
  float threshold = 1.0f;
  unsigned reset = 0;      // core::Reset
  unsigned surrogate = 0;  // core::SurrogateKind
  float scale = 10.0f;
  // The listed backward: the gradient of this layer's spikes is formed only
  // where the spike's surrogate derivative d is non-zero (ListedGradInput; 0
  // elsewhere). Exact, since that gradient reaches the neuron only times d;
  // worth it for a surrogate of bounded support (triangle, boxcar).
  bool listed = false;
  // Learned decay: beta's gradient out of the backward build (grad_beta +=
  // sum over samples and steps of gv v(t - 1); v(t - 1) taped per step).
  bool learnDecay = false;
  // Learned threshold: a per-neuron threshold [n] as an input after the
  // layer's weights, in place of `threshold`, and its gradient (sum of
  // (1 - z) grad_v_new - gv, ipu_snn/neuron/spec.py).
  bool learnThreshold = false;
  // The neuron model (core::NeuronKind: 0 LIF, 1 ALIF, 2 CUBA). ALIF and CUBA
  // keep a second state a (adaptation; CUBA's synaptic current) with its own
  // decay rho (an op input after the layer's others); adaptStrength is ALIF's.
  unsigned kind = 0;
  float adaptStrength = 0.0f;
  bool twoStates() const { return kind != 0; }
};

enum class ActionKind : unsigned { Advance = 0, Reverse = 1, Store = 2, Load = 3, Free = 4 };

// An ipu_snn.bptt schedule action over steps: Advance(n0, n1, tape),
// Reverse(n0), Store/Load/Free(n0, offchip) in checkpoint slot `slot` of its tier.
struct Action {
  ActionKind kind;
  unsigned n0 = 0, n1 = 0;
  bool tape = false;
  bool offchip = false;
  unsigned slot = 0;
};

struct NetworkSpec {
  unsigned batch = 1, steps = 1, inputs = 1;
  std::vector<LayerSpec> layers;  // the spiking layers
  unsigned readout = 1;           // the leaky-integrator readout's neurons (n_out)
  unsigned tapeSlots = 1;         // taped steps alive at once (step n uses slot n % tapeSlots)
  unsigned localSlots = 0;        // checkpoints kept on the tiles
  unsigned offchipSlots = 0;      // checkpoints in streaming memory
  unsigned samplesPerPass = 0;    // samples per input-gradient pass (0: the whole batch)
  std::vector<Action> actions;
};

struct LayerTensors {
  poplar::Tensor weightIn;       // [n_in, n]
  poplar::Tensor bias;           // [n]
  poplar::Tensor weightRec;      // [n, n] (recurrent layers)
  poplar::Tensor beta;           // [n], clamped to [0, 1] by the caller
  poplar::Tensor gradWeightIn;   // float [n_in, n], accumulated over the steps
  poplar::Tensor gradBias;       // float [n]
  poplar::Tensor gradWeightRec;  // float [n, n]
  poplar::Tensor threshold;      // [n] (learnThreshold)
  poplar::Tensor rho;            // [n]: the second state's decay (ALIF, CUBA), clamped by the caller
  poplar::Tensor gradBeta;       // float [n] (learnDecay)
  poplar::Tensor gradThreshold;  // float [n] (learnThreshold)
  poplar::Tensor spikeCount;     // float [B, n]: spikes of each neuron over the forward pass
  poplar::Tensor state;          // float [B, n]: z after the last step run
  std::vector<unsigned> tiles;   // the layer's tiles, one per column range
};

// The leaky-integrator readout v(t) = beta v(t - 1) + z_last(t) W + b, v(-1) = 0.
struct ReadoutTensors {
  poplar::Tensor weight;      // [n_last, n_out]
  poplar::Tensor bias;        // [n_out]
  poplar::Tensor beta;        // [n_out], clamped to [0, 1] by the caller
  poplar::Tensor gradWeight;  // float [n_last, n_out]
  poplar::Tensor gradBias;    // float [n_out]
  poplar::Tensor gradBeta;    // float [n_out]
  std::vector<unsigned> tiles;
};

struct NetworkGraph {
  poplar::Tensor inputBits;   // uint8 [B, T, ceil(n_in / 8)]
  poplar::Tensor output;      // float [T, B, n_out]: the readout's membrane trace
  poplar::Tensor gradOutput;  // float [T, B, n_out] (backward)
  std::vector<LayerTensors> layers;
  ReadoutTensors readout;
  // What the forward program leaves for the backward one, as whole tensors in
  // carriedShapes' order: the PopART op outputs them and its grad op takes
  // them back (custom_ops/poplar/network_op.cpp).
  std::vector<poplar::Tensor> carried;
  poplar::program::Sequence forward;   // the forward build's
  poplar::program::Sequence backward;  // the backward build's
};

// Tiles each population takes (the spiking layers, then the readout):
// min(size, its share of the target's tiles).
std::vector<unsigned> layerTiles(const NetworkSpec &spec, unsigned numTiles);

// One carried tensor: packed bits (uint8) or float, and its shape.
struct CarriedShape {
  bool bits = false;
  std::vector<std::size_t> shape;
};

// NetworkGraph::carried's types and shapes, from the spec alone (PopART sizes
// the op's outputs before any graph exists). Each is flat and part-major (each
// tile's block whole, so that a tile's share is one slice), nb = ceil(n / 8):
// per spiking layer v [B n] (and a [B n], ALIF and CUBA), for recurrent layers
// the last spikes' bits [B nb], the tape d [S B n] (and v(t - 1) [S B n],
// learnDecay) and bits [S B nb] (and the bits each step started from,
// recurrent), with local slots the checkpoints v [K B n] (and a [K B n], and
// bits [K B nb], recurrent); the readout's v [B n_out] (and checkpoints
// [K B n_out]); the trace with its zero row [(T + 1) B n_out].
std::vector<CarriedShape> carriedShapes(const NetworkSpec &spec);

// Makes the remote buffer of an off-chip checkpoint: (name, the tensor a row
// holds, rows). By default the forward build calls graph.addRemoteBuffer; the
// backward build must be given the forward's (the PopART ops share theirs
// through the lowering's registry, the host interpreter by name).
using RemoteBufferMaker =
    std::function<poplar::RemoteBuffer(const std::string &, const poplar::Tensor &, std::size_t)>;

// Which program a build makes. PopART grows the op's forward build in its Opx
// and the backward build in its grad op's, over the forward's tensors.
enum class Pass : unsigned { Forward = 0, Backward = 1 };

// Tensors a build uses as they are, in place of new variables: nothing is
// copied. Each list is empty (the build makes them, laid out as createInput and
// the carried state's layout say) or complete.
struct NetworkTensors {
  std::vector<poplar::Tensor> inputs;        // the op's inputs (inputCount): the bits, then the parameters
  std::vector<poplar::Tensor> carried;       // in carriedShapes' order: the forward build's NetworkGraph::carried
  std::optional<poplar::Tensor> gradOutput;  // float [T, B, n_out] (backward)
};

// The op's inputs: the packed bits uint8 [B, T, ceil(n_in / 8)], then per
// spiking layer weight_in [n_in, n], bias [n], beta [n], [weight_rec [n, n]],
// [threshold [n] (learnThreshold)], [rho [n] (ALIF, CUBA)], then the readout's
// weight [n_last, n_out], bias, beta.
std::size_t inputCount(const NetworkSpec &spec);

// Input `index` laid out on the op's tiles, exactly as buildNetwork lays out an
// input it is not given (one function decides both): the bits' sample b on
// layer 0's part b mod its parts, each parameter's columns on their neurons'
// tiles. What PopART's Opx::createInput returns.
poplar::Tensor createInput(poplar::Graph &graph, const NetworkSpec &spec, std::size_t index);

// Builds one pass of the network op's graph: the tensors it is not given, the
// vertices, and its program (NetworkGraph::forward or ::backward). The forward
// build makes the carried state; the backward build takes it (given) and makes
// only its scratch and the gradients; a forward step runs in it only where the
// schedule recomputes. Throws std::invalid_argument on a spec that cannot be
// built (no tiles, a schedule the tape cannot hold) or a given tensor of the
// wrong size or type.
NetworkGraph buildNetwork(poplar::Graph &graph, const NetworkSpec &spec, Pass pass, const NetworkTensors &given = {},
                          const RemoteBufferMaker &remoteBuffer = {});

}  // namespace network
}  // namespace ipu_snn
