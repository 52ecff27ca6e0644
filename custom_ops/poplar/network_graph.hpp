// The network op's graph: plain functions over a poplar::Graph (Poplar only)
// that build every spiking layer's tensors, vertices, tile mappings and
// programs for a whole sequence. The PopART op and grad op are wrappers that
// call buildNetwork; the host interpreter (ipu_snn/ipu/interpreter.py) runs
// the very same graph, and `ipu-snn plan --device ipu-mk2` counts it.
//
// Layout: layer l's neurons are split over its own tile range
// (tiling::splitEven); each tile holds, for its columns, the input and
// recurrent weight columns, bias, decay, state (v, z), the taped steps of the
// BPTT schedule (z, d and the z the step started from), the local checkpoints
// and the weight-gradient accumulators. Inputs are packed bits
// uint8 [B, T, ceil(n_in / 8)], sample b on tile b mod (layer 0's tiles).
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
  std::vector<LayerSpec> layers;
  unsigned tapeSlots = 1;     // taped steps alive at once (step n uses slot n % tapeSlots)
  unsigned localSlots = 0;    // checkpoints kept on the tiles
  unsigned offchipSlots = 0;  // checkpoints in streaming memory
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
  poplar::Tensor spikeCount;     // float [B, n]: spikes of each neuron over the forward pass
  poplar::Tensor state;          // float [B, n]: z after the last step run
  std::vector<unsigned> tiles;   // the layer's tiles, one per column range
};

struct NetworkGraph {
  poplar::Tensor inputBits;   // uint8 [B, T, ceil(n_in / 8)]
  poplar::Tensor output;      // float [T, B, n_last]: the last layer's spikes
  poplar::Tensor gradOutput;  // float [T, B, n_last]
  std::vector<LayerTensors> layers;
  // What the forward program leaves for the backward one, as whole tensors in
  // carriedShapes' order: the PopART op outputs them and its grad op takes
  // them back (custom_ops/poplar/network_op.cpp).
  std::vector<poplar::Tensor> carried;
  poplar::program::Sequence forward;
  poplar::program::Sequence backward;
};

// Tiles each layer takes: min(size, its share of the target's tiles).
std::vector<unsigned> layerTiles(const NetworkSpec &spec, unsigned numTiles);

// The shapes (float elements) of NetworkGraph::carried, from the spec alone
// (PopART sizes the op's outputs before any graph exists): per layer v and z
// [B, n], the tapes z and d (and the z each step started from, recurrent
// layers) [tapeSlots, B, n], and with local slots the checkpoints v and z
// [localSlots, B, n].
std::vector<std::vector<std::size_t>> carriedShapes(const NetworkSpec &spec);

// Makes the remote buffer of an off-chip checkpoint: (name, the tensor a row
// holds, rows). By default graph.addRemoteBuffer; the PopART ops share theirs
// through the lowering's registry instead.
using RemoteBufferMaker =
    std::function<poplar::RemoteBuffer(const std::string &, const poplar::Tensor &, std::size_t)>;

// Builds the network op's graph; throws std::invalid_argument on a spec that
// cannot be built (no tiles, a schedule the tape cannot hold).
NetworkGraph buildNetwork(poplar::Graph &graph, const NetworkSpec &spec,
                          const RemoteBufferMaker &remoteBuffer = {});

}  // namespace network
}  // namespace ipu_snn
