// The network op's graph (see network_graph.hpp). Poplar calls only; every
// vertex is a codelet of neuron_codelets.cpp or network_codelets.cpp.
#include "network_graph.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <stdexcept>

#include "tile_split.hpp"
#include "work_split.h"

namespace ipu_snn {
namespace network {
namespace {

using poplar::Tensor;
namespace program = poplar::program;

// Where one tile's share of a population lies: its columns, and the bytes of
// the layer's spike bits it writes (neurons 8k on it).
struct PartLayout {
  unsigned tile = 0;
  std::size_t c0 = 0, c1 = 0;
  std::size_t kb0 = 0, kb1 = 0;
  std::size_t width() const { return c1 - c0; }
  std::size_t bytes() const { return kb1 - kb0; }
};

// The op's layout on the target, from the spec alone: each population's parts
// (the spiking layers, then the readout) on its own tile range (layerTiles),
// its neurons split evenly (tiling::splitEven); the trace's (sample, neuron)
// pairs split over the first min(B n_out, tiles) tiles. Every tensor the op
// takes, outputs or creates is laid out from this (one place decides it).
struct Layout {
  std::vector<std::vector<PartLayout>> pops;
  std::vector<tiling::Range> outRanges;  // the trace pairs on tile j
};

Layout layoutOf(const NetworkSpec &s, unsigned numTiles) {
  Layout lay;
  const std::vector<unsigned> tiles = layerTiles(s, numTiles);
  unsigned next = 0;
  for (std::size_t l = 0; l <= s.layers.size(); ++l) {
    const std::size_t n = l == s.layers.size() ? s.readout : s.layers[l].size;
    std::vector<PartLayout> parts;
    for (const auto &r : tiling::splitEven(n, tiles[l])) {
      PartLayout p;
      p.tile = next + unsigned(parts.size());
      p.c0 = r.begin;
      p.c1 = r.end;
      p.kb0 = (p.c0 + 7) / 8;
      p.kb1 = (p.c1 + 7) / 8;
      parts.push_back(p);
    }
    next += tiles[l];
    lay.pops.push_back(std::move(parts));
  }
  const std::size_t K = std::size_t(s.batch) * s.readout;
  lay.outRanges = tiling::splitEven(K, std::min<std::size_t>(K, numTiles));
  return lay;
}

std::string popName(const NetworkSpec &s, std::size_t l) {
  return l == s.layers.size() ? "readout" : "layer" + std::to_string(l);
}
std::string partName(const NetworkSpec &s, std::size_t l, const PartLayout &p) {
  return popName(s, l) + ".tile" + std::to_string(p.tile) + ".";
}
std::size_t inputsOf(const NetworkSpec &s, std::size_t l) { return l == 0 ? s.inputs : s.layers[l - 1].size; }

Tensor variable(poplar::Graph &g, const poplar::Type &type, std::vector<std::size_t> shape, unsigned tile,
                const std::string &name) {
  Tensor t = g.addVariable(type, shape, {name});
  g.setTileMapping(t, tile);
  return t;
}

// A layer's spike bits [B, ceil(n / 8)]: byte k of every row on the tile that owns neuron 8k.
Tensor layerBits(poplar::Graph &g, const NetworkSpec &s, const std::vector<PartLayout> &parts, std::size_t n,
                 const std::string &name) {
  Tensor t = g.addVariable(poplar::UNSIGNED_CHAR, {std::size_t(s.batch), (n + 7) / 8}, {name});
  for (std::size_t b = 0; b < s.batch; ++b)
    for (const PartLayout &p : parts)
      if (p.bytes() > 0) g.setTileMapping(t[b].slice(p.kb0, p.kb1, 0), p.tile);
  return t;
}

// The op's inputs after the bits: per spiking layer weight_in, bias, beta,
// [weight_rec], [threshold]; then the readout's weight, bias, beta.
enum class Param { WeightIn, Bias, Beta, WeightRec, Threshold, Rho };
struct ParamRef {
  std::size_t pop;
  Param param;
};
std::vector<ParamRef> paramRefs(const NetworkSpec &s) {
  std::vector<ParamRef> refs;
  for (std::size_t l = 0; l <= s.layers.size(); ++l) {
    for (Param p : {Param::WeightIn, Param::Bias, Param::Beta}) refs.push_back({l, p});
    if (l < s.layers.size() && s.layers[l].recurrent) refs.push_back({l, Param::WeightRec});
    if (l < s.layers.size() && s.layers[l].learnThreshold) refs.push_back({l, Param::Threshold});
    if (l < s.layers.size() && s.layers[l].twoStates()) refs.push_back({l, Param::Rho});
  }
  return refs;
}

// Input `index` of the op, laid out: the bits [B, T, nb] with sample b on layer
// 0's part b mod its parts; a parameter as its parts' columns (weights) or
// elements (vectors), each on its part's tile.
Tensor makeInput(poplar::Graph &g, const NetworkSpec &s, const Layout &lay, std::size_t index) {
  if (index == 0) {
    const std::size_t B = s.batch;
    Tensor t = g.addVariable(poplar::UNSIGNED_CHAR, {B, std::size_t(s.steps), (s.inputs + 7) / 8}, {"inputBits"});
    const auto &first = lay.pops[0];
    for (std::size_t b = 0; b < B; ++b) g.setTileMapping(t[b], first[b % first.size()].tile);
    return t;
  }
  const ParamRef ref = paramRefs(s).at(index - 1);
  const std::size_t l = ref.pop;
  const bool weight = ref.param == Param::WeightIn || ref.param == Param::WeightRec;
  const std::size_t rows = ref.param == Param::WeightIn ? inputsOf(s, l) : weight ? s.layers[l].size : 1;
  const char *name = "";
  switch (ref.param) {
    case Param::WeightIn: name = "weightIn"; break;
    case Param::Bias: name = "bias"; break;
    case Param::Beta: name = "beta"; break;
    case Param::WeightRec: name = "weightRec"; break;
    case Param::Threshold: name = "threshold"; break;
    case Param::Rho: name = "rho"; break;
  }
  std::vector<Tensor> parts;
  for (const PartLayout &p : lay.pops[l]) {
    const std::vector<std::size_t> shape = weight ? std::vector<std::size_t>{rows, p.width()} : std::vector<std::size_t>{p.width()};
    parts.push_back(variable(g, poplar::FLOAT, shape, p.tile, partName(s, l, p) + name));
  }
  return poplar::concat(parts, weight ? 1 : 0);
}

// The carried state, in carriedShapes' order.
enum class Carry { V, A, StateBits, TapeD, TapeVPrev, TapeBits, TapePrevBits, CheckpointV, CheckpointA, CheckpointBits,
                   Trace };
struct CarriedRef {
  std::size_t pop;
  Carry kind;
};
std::vector<CarriedRef> carriedRefs(const NetworkSpec &s) {
  std::vector<CarriedRef> refs;
  const bool local = s.localSlots > 0;
  const std::size_t L = s.layers.size();
  for (std::size_t l = 0; l < L; ++l) {
    const bool rec = s.layers[l].recurrent;
    refs.push_back({l, Carry::V});
    if (s.layers[l].twoStates()) refs.push_back({l, Carry::A});
    if (rec) refs.push_back({l, Carry::StateBits});
    refs.push_back({l, Carry::TapeD});
    if (s.layers[l].learnDecay) refs.push_back({l, Carry::TapeVPrev});
    refs.push_back({l, Carry::TapeBits});
    if (rec) refs.push_back({l, Carry::TapePrevBits});
    if (local) {
      refs.push_back({l, Carry::CheckpointV});
      if (s.layers[l].twoStates()) refs.push_back({l, Carry::CheckpointA});
      if (rec) refs.push_back({l, Carry::CheckpointBits});
    }
  }
  refs.push_back({L, Carry::V});
  if (local) refs.push_back({L, Carry::CheckpointV});
  refs.push_back({L, Carry::Trace});
  return refs;
}

// The carried state is flat and part-major: each holder's block whole, in
// order (a part's v [B, w], tape d [S, B, w], tape bits [S, B, kb] of the parts
// that write bytes, checkpoints [K, B w] and [K, B kb]; the trace's [T + 1, k]
// on tile j; a recurrent layer's last bits [B, nb] one variable mapped by byte),
// so that a part's share is one contiguous slice of the whole.
struct Block {
  unsigned tile;
  std::vector<std::size_t> shape;  // empty: this holder has none
  std::string name;
};
std::vector<Block> carriedBlocks(const NetworkSpec &s, const Layout &lay, const CarriedRef &ref) {
  const std::size_t B = s.batch, S = s.tapeSlots, K = s.localSlots, l = ref.pop;
  std::vector<Block> blocks;
  if (ref.kind == Carry::Trace) {
    for (std::size_t j = 0; j < lay.outRanges.size(); ++j)
      blocks.push_back({unsigned(j), {std::size_t(s.steps) + 1, lay.outRanges[j].size()},
                        "trace.tile" + std::to_string(j) + ".output"});
    return blocks;
  }
  for (const PartLayout &p : lay.pops[l]) {
    const std::size_t w = p.width(), kb = p.bytes();
    const std::string pn = partName(s, l, p);
    std::vector<std::size_t> shape;
    std::string name;
    switch (ref.kind) {
      case Carry::V: shape = {B, w}, name = "v"; break;
      case Carry::A: shape = {B, w}, name = "a"; break;
      case Carry::TapeD: shape = {S, B, w}, name = "tapeD"; break;
      case Carry::TapeVPrev: shape = {S, B, w}, name = "tapeVPrev"; break;
      case Carry::TapeBits: case Carry::TapePrevBits:
        if (kb > 0) shape = {S, B, kb};
        name = ref.kind == Carry::TapeBits ? "tapeBits" : "tapePrevBits";
        break;
      case Carry::CheckpointV: shape = {K, B * w}, name = "checkpointV"; break;
      case Carry::CheckpointA: shape = {K, B * w}, name = "checkpointA"; break;
      case Carry::CheckpointBits:
        if (kb > 0) shape = {K, B * kb};
        name = "checkpointBits";
        break;
      default: break;
    }
    blocks.push_back({p.tile, shape, pn + name});
  }
  return blocks;
}

// Carried tensor `ref`, laid out: each block on its holder's tile.
Tensor makeCarried(poplar::Graph &g, const NetworkSpec &s, const Layout &lay, const CarriedRef &ref) {
  if (ref.kind == Carry::StateBits)
    return layerBits(g, s, lay.pops[ref.pop], s.layers[ref.pop].size, popName(s, ref.pop) + ".stateBits").flatten();
  const bool bits = ref.kind == Carry::TapeBits || ref.kind == Carry::TapePrevBits || ref.kind == Carry::CheckpointBits;
  std::vector<Tensor> ts;
  for (const Block &b : carriedBlocks(s, lay, ref))
    if (!b.shape.empty())
      ts.push_back(variable(g, bits ? poplar::UNSIGNED_CHAR : poplar::FLOAT, b.shape, b.tile, b.name).flatten());
  return poplar::concat(ts, 0);
}

// One tile's share of a population: its columns and everything it keeps for
// them. Inputs and carried state are slices of the whole tensors (given or
// made by makeInput / makeCarried); the rest is the build's own.
struct Part : PartLayout {
  Tensor wIn, bias, beta, wRec, threshold;   // parameters
  Tensor gwIn, gBias, gwRec, gBeta, gThreshold;  // gradients, accumulated
  Tensor v, vNew, zNew, d, current, scratch, spikeCount;  // state and one step
  Tensor tapeD, tapeVPrev, tapeBits, tapePrevBits;  // [S, B, w], [S, B, kb]
  Tensor vPrevStep;                          // the backward step's v(n - 1) (learnDecay)
  Tensor ckptV, ckptA, ckptBits;             // [localSlots, ...]
  poplar::RemoteBuffer remoteV, remoteA, remoteBits;  // offchip slots
  Tensor rho, a, aNew, ga, gaNew, gvPre;     // the second state (ALIF, CUBA): decay, state, step, gradients
  Tensor dStep, gv, gvNew, gc, carried, fromAbove, ownBits;
  Tensor partial;  // [max n_in x samplesPerPass]: a pass's input-gradient partial, neuron-major
  Tensor stage;    // the first reduction stage's sums of a slice of it
  std::size_t stageLen = 0;
};

// A spiking layer or the readout over its tiles.
struct Pop {
  std::vector<Part> parts;
  std::size_t n = 0;
  bool readout = false, recurrent = false;
  LayerSpec spec;
  // the layer's spike bits [B, ceil(n / 8)], byte k on the tile of neuron 8k:
  // this step's (newBits), the last step's (stateBits, recurrent), and in the
  // backward step the taped ones of step n (stepBits) and n - 1 (prevBits)
  Tensor newBits, stateBits, stepBits, prevBits;
  // listed layers: in the backward step, which of step n's spikes can take a gradient (d != 0), as bits
  Tensor liveBits;
  bool live = false;  // liveBits exists: some consumer tile lists by it (Builder::listsAt)
  Tensor zNewWhole;  // [B, n]
};

// The two-stage sum of a product's input-gradient partials over its consumer
// tiles: groups of about sqrt(P) consumers; member k of a group sums chunk k of
// the destination's tiles (neurons range[k]) over its group; each destination
// tile then sums its slice over the groups.
struct Tree {
  std::vector<tiling::Range> groups;  // consumer parts of each group
  std::vector<tiling::Range> chunks;  // destination parts of each chunk k
  std::vector<tiling::Range> neurons; // destination neurons of each chunk k
};

Tree treeOf(const std::vector<Part> &consumers, const std::vector<Part> &dest) {
  const std::size_t P = consumers.size(), Q = dest.size();
  const std::size_t size = std::max<std::size_t>(1, std::size_t(std::ceil(std::sqrt(double(P)))));
  Tree t;
  t.groups = tiling::splitEven(P, (P + size - 1) / size);
  std::size_t smallest = P;
  for (const auto &g : t.groups) smallest = std::min(smallest, g.size());
  t.chunks = tiling::splitEven(Q, std::min(Q, smallest));
  for (const auto &c : t.chunks) t.neurons.push_back({dest[c.begin].c0, dest[c.end - 1].c1});
  return t;
}

class Builder {
public:
  Builder(poplar::Graph &g, const NetworkSpec &s, Pass pass, const NetworkTensors &given,
          const RemoteBufferMaker &remote)
      : g_(g), s_(s), pass_(pass), given_(given), remote_(remote) {}
  NetworkGraph build();

private:
  poplar::Graph &g_;
  const NetworkSpec &s_;
  const Pass pass_;
  const NetworkTensors &given_;
  const RemoteBufferMaker &remote_;
  Layout layout_;
  std::vector<Pop> pops_;  // the spiking layers, then the readout
  Tensor counter_;
  Tensor inStep_;  // uint8 [B, nb], sample b on layer 0's tile b mod parts
  // the trace and its gradient, [T + 1, k] and [T, k] per holding tile (row T: v(-1) = 0)
  std::vector<Tensor> outPieces_, gradPieces_, gradStep_, vPrevStep_;
  std::vector<tiling::Range> outRanges_;
  std::vector<unsigned> outTiles_;
  std::map<unsigned, Tensor> constants_;
  NetworkGraph net_;
  program::Sequence step_, taped_, back_;

  std::size_t passSize() const { return s_.samplesPerPass == 0 ? s_.batch : std::min(s_.samplesPerPass, s_.batch); }
  std::size_t nIn(std::size_t l) const { return l == 0 ? s_.inputs : pops_[l - 1].n; }
  Pop &readout() { return pops_.back(); }
  // Whether consumer tile p forms its input gradient of dest listed (ListedGradInput): dest is listed and
  // p holds more than one column (with one, a bit test costs what the one-term dot product it saves does).
  static bool listsAt(const Pop &dest, const Part &p) { return dest.spec.listed && p.width() > 1; }
  std::size_t spiking() const { return pops_.size() - 1; }
  Tensor var(const poplar::Type &type, std::vector<std::size_t> shape, unsigned tile, const std::string &name) {
    return variable(g_, type, std::move(shape), tile, name);
  }
  Tensor constantStep(unsigned n) {
    auto found = constants_.find(n);
    if (found != constants_.end()) return found->second;
    Tensor c = g_.addConstant<unsigned>(poplar::UNSIGNED_INT, {1}, n, {"step" + std::to_string(n)});
    g_.setTileMapping(c, 0);
    return constants_.emplace(n, c).first->second;
  }
  poplar::VertexRef vertex(poplar::ComputeSet cs, const std::string &type, unsigned tile) {
    poplar::VertexRef v = g_.addVertex(cs, type);
    g_.setTileMapping(v, tile);
    return v;
  }
  static Tensor whole(const std::vector<Part> &ps, Tensor Part::*member, unsigned dim) {
    std::vector<Tensor> ts;
    for (const Part &p : ps) ts.push_back(p.*member);
    return poplar::concat(ts, dim);
  }
  void allocate(bool steps, bool backSteps);
  void takeInputs();
  void takeCarried();
  void allocateStepScratch(bool counts);
  void allocateBackward();
  void stepLoad(poplar::ComputeSet cs, const Tensor &src, const Tensor &dst, unsigned tile, std::size_t slots,
                std::size_t offset = 0);
  void stepStore(poplar::ComputeSet cs, const Tensor &src, const Tensor &dst, unsigned tile, std::size_t slots);
  program::Sequence forwardStep(bool tape);
  program::Sequence backwardStep();
  void gradInput(program::Sequence &seq, Pop &cons, Tensor Part::*weight, std::size_t n, Pop &dest,
                 Tensor Part::*into, const std::string &name);
  void gradWeight(poplar::ComputeSet cs, const Tensor &bits, std::size_t n, Part &p, const Tensor &acc);
  void zero(program::Sequence &seq, const std::vector<std::pair<Tensor, unsigned>> &ts, const std::string &name);
  program::Sequence actions(std::size_t begin, std::size_t end);
  void stepCount(program::Sequence &seq, int delta);
};

// Columns [c0, c1) of a population's [B, w] per-part tensors `member`, as
// [B, c1 - c0]: the overlapping parts' slices side by side (cheaper to build
// than a slice of the whole [B, n], which has B regions per part).
Tensor columns(const Pop &pop, Tensor Part::*member, std::size_t c0, std::size_t c1) {
  std::vector<Tensor> ts;
  auto q = std::upper_bound(pop.parts.begin(), pop.parts.end(), c0,
                            [](std::size_t c, const Part &p) { return c < p.c1; });
  for (; q != pop.parts.end() && q->c0 < c1; ++q)
    ts.push_back(((*q).*member).slice(std::max(c0, q->c0) - q->c0, std::min(c1, q->c1) - q->c0, 1));
  return poplar::concat(ts, 1);
}

// The slices [at[i], at[i + 1]) of `t` along `dim`, by halving: a view of R
// regions is sliced in O(R) time (the mock Poplar's, as any plain region list),
// so halving costs O(R log P) in all where P slices of the whole would cost
// O(R P) (W1's weights and output gradient have about a million regions).
void slicesInto(const Tensor &t, unsigned dim, const std::vector<std::size_t> &at, std::size_t b, std::size_t e,
                std::vector<Tensor> &out) {
  if (e - b == 1) {
    out[b] = t;
    return;
  }
  const std::size_t m = (b + e) / 2;
  slicesInto(t.slice(0, at[m] - at[b], dim), dim, at, b, m, out);
  slicesInto(t.slice(at[m] - at[b], at[e] - at[b], dim), dim, at, m, e, out);
}
std::vector<Tensor> slices(const Tensor &t, unsigned dim, const std::vector<std::size_t> &at) {
  std::vector<Tensor> out(at.size() - 1);
  if (!out.empty()) slicesInto(t.slice(at.front(), at.back(), dim), dim, at, 0, out.size(), out);
  return out;
}

// A given tensor must be what the op's layout would have made: its type and size.
void checkGiven(const Tensor &t, const poplar::Type &type, std::size_t n, const std::string &what) {
  if (!(t.elementType() == type) || t.numElements() != n)
    throw std::invalid_argument("network graph: the given " + what + " has " + std::to_string(t.numElements()) +
                                " elements of another size or type than the " + std::to_string(n) + " it needs");
}

// The op's inputs (given, or made by makeInput), each part's share a slice of them.
void Builder::takeInputs() {
  const std::size_t count = inputCount(s_);
  if (!given_.inputs.empty() && given_.inputs.size() != count)
    throw std::invalid_argument("network graph: " + std::to_string(given_.inputs.size()) + " inputs given, " +
                                std::to_string(count) + " needed");
  const auto refs = paramRefs(s_);
  for (std::size_t i = 0; i < count; ++i) {
    const Tensor t = given_.inputs.empty() ? makeInput(g_, s_, layout_, i) : given_.inputs[i];
    if (i == 0) {
      checkGiven(t, poplar::UNSIGNED_CHAR, std::size_t(s_.batch) * s_.steps * ((s_.inputs + 7) / 8), "input bits");
      net_.inputBits = t.reshape({std::size_t(s_.batch), std::size_t(s_.steps), (s_.inputs + 7) / 8});
      continue;
    }
    const ParamRef ref = refs[i - 1];
    Pop &pop = pops_[ref.pop];
    const bool weight = ref.param == Param::WeightIn || ref.param == Param::WeightRec;
    const std::size_t rows = ref.param == Param::WeightIn ? nIn(ref.pop) : pop.n;
    checkGiven(t, poplar::FLOAT, (weight ? rows : 1) * pop.n, "input " + std::to_string(i));
    const Tensor whole = weight ? t.reshape({rows, pop.n}) : t.reshape({pop.n});
    std::vector<std::size_t> at;
    for (const Part &p : pop.parts) at.push_back(p.c0);
    at.push_back(pop.n);
    const std::vector<Tensor> shares = slices(whole, weight ? 1 : 0, at);
    LayerTensors none;
    LayerTensors &lt = pop.readout ? none : net_.layers[ref.pop];
    ReadoutTensors &r = net_.readout;
    for (std::size_t j = 0; j < shares.size(); ++j) {
      Part &p = pop.parts[j];
      switch (ref.param) {
        case Param::WeightIn: p.wIn = shares[j]; break;
        case Param::Bias: p.bias = shares[j]; break;
        case Param::Beta: p.beta = shares[j]; break;
        case Param::WeightRec: p.wRec = shares[j]; break;
        case Param::Threshold: p.threshold = shares[j]; break;
        case Param::Rho: p.rho = shares[j]; break;
      }
    }
    switch (ref.param) {
      case Param::WeightIn: (pop.readout ? r.weight : lt.weightIn) = whole; break;
      case Param::Bias: (pop.readout ? r.bias : lt.bias) = whole; break;
      case Param::Beta: (pop.readout ? r.beta : lt.beta) = whole; break;
      case Param::WeightRec: lt.weightRec = whole; break;
      case Param::Threshold: lt.threshold = whole; break;
      case Param::Rho: lt.rho = whole; break;
    }
  }
}

// The carried state (given: the forward build's; or made by makeCarried), each
// part's share a slice of it (carriedBlocks).
void Builder::takeCarried() {
  const auto refs = carriedRefs(s_);
  const auto shapes = carriedShapes(s_);
  if (!given_.carried.empty() && given_.carried.size() != refs.size())
    throw std::invalid_argument("network graph: " + std::to_string(given_.carried.size()) +
                                " carried tensors given, " + std::to_string(refs.size()) + " needed");
  for (std::size_t k = 0; k < refs.size(); ++k) {
    const CarriedRef ref = refs[k];
    const Tensor t = given_.carried.empty() ? makeCarried(g_, s_, layout_, ref) : given_.carried[k];
    checkGiven(t, shapes[k].bits ? poplar::UNSIGNED_CHAR : poplar::FLOAT, shapes[k].shape.at(0),
               "carried tensor " + std::to_string(k));
    const Tensor whole = t.flatten();
    net_.carried.push_back(whole);
    Pop &pop = pops_[ref.pop];
    if (ref.kind == Carry::StateBits) {
      pop.stateBits = whole.reshape({std::size_t(s_.batch), (pop.n + 7) / 8});
      continue;
    }
    const std::vector<Block> blocks = carriedBlocks(s_, layout_, ref);
    std::vector<std::size_t> at = {0};
    for (const Block &b : blocks) {
      std::size_t n = b.shape.empty() ? 0 : 1;
      for (std::size_t d : b.shape) n *= d;
      at.push_back(at.back() + n);
    }
    const std::vector<Tensor> pieces = slices(whole, 0, at);
    for (std::size_t j = 0; j < blocks.size(); ++j) {
      if (blocks[j].shape.empty()) continue;
      const Tensor block = pieces[j].reshape(blocks[j].shape);
      if (ref.kind == Carry::Trace) {
        outPieces_.push_back(block);
        continue;
      }
      Part &p = pop.parts[j];
      switch (ref.kind) {
        case Carry::V: p.v = block; break;
        case Carry::A: p.a = block; break;
        case Carry::TapeD: p.tapeD = block; break;
        case Carry::TapeVPrev: p.tapeVPrev = block; break;
        case Carry::TapeBits: p.tapeBits = block; break;
        case Carry::TapePrevBits: p.tapePrevBits = block; break;
        case Carry::CheckpointV: p.ckptV = block; break;
        case Carry::CheckpointA: p.ckptA = block; break;
        case Carry::CheckpointBits: p.ckptBits = block; break;
        default: break;
      }
    }
  }
}

// What a forward step computes into (its current, neuron update and spike
// bits; the spiking layers' `scratch` is allocate's), and with `counts` each
// layer's spike counts (the forward build's output).
void Builder::allocateStepScratch(bool counts) {
  const std::size_t B = s_.batch;
  for (std::size_t l = 0; l < pops_.size(); ++l) {
    Pop &pop = pops_[l];
    for (Part &p : pop.parts) {
      const std::string pn = partName(s_, l, p);
      auto f = [&](std::vector<std::size_t> shape, const std::string &name) {
        return var(poplar::FLOAT, shape, p.tile, pn + name);
      };
      p.vNew = f({B, p.width()}, "vNew");
      p.current = f({B, p.width()}, "current");
      if (pop.readout) continue;
      for (auto [member, name] : {std::pair{&Part::zNew, "zNew"}, {&Part::d, "d"}})
        p.*member = f({B, p.width()}, name);
      if (counts) p.spikeCount = f({B, p.width()}, "spikeCount");
      if (pop.spec.twoStates()) p.aNew = f({B, p.width()}, "aNew");
    }
    if (pop.readout) continue;
    pop.newBits = layerBits(g_, s_, layout_.pops[l], pop.n, popName(s_, l) + ".bits");
    pop.zNewWhole = whole(pop.parts, &Part::zNew, 1);
    LayerTensors &lt = net_.layers[l];
    if (counts) lt.spikeCount = whole(pop.parts, &Part::spikeCount, 1);
    lt.state = pop.zNewWhole;
  }
}

// What the backward step needs anew: the gradient accumulators, the step's
// gradients and its taped inputs, the input-gradient partials and their first
// stage, the output's gradient (unless given) and its step.
void Builder::allocateBackward() {
  const std::size_t B = s_.batch, C = passSize(), L = spiking();
  for (std::size_t l = 0; l <= L; ++l) {
    Pop &pop = pops_[l];
    const std::size_t n = pop.n, nin = nIn(l);
    for (Part &p : pop.parts) {
      const std::size_t w = p.width();
      const std::string pn = partName(s_, l, p);
      auto f = [&](std::vector<std::size_t> shape, const std::string &name) {
        return var(poplar::FLOAT, shape, p.tile, pn + name);
      };
      p.gwIn = f({nin, w}, "gradWeightIn");
      p.gBias = f({w}, "gradBias");
      p.gc = f({B, w}, "gradCurrent");
      p.gv = f({B, w}, "gradV");
      std::size_t widest = nin;  // the partial's neurons: the largest input it takes the gradient of
      if (pop.readout) {
        p.gBeta = f({w}, "gradBeta");
      } else {
        for (auto [member, name] : {std::pair{&Part::dStep, "dStep"}, {&Part::gvNew, "gradVNew"},
                                    {&Part::fromAbove, "gradZ"}})
          p.*member = f({B, w}, name);
        if (pop.spec.learnDecay) {
          p.gBeta = f({w}, "gradBeta");
          p.vPrevStep = f({B, w}, "vPrevStep");
        }
        if (pop.spec.learnThreshold) p.gThreshold = f({w}, "gradThreshold");
        if (pop.spec.twoStates()) {
          p.ga = f({B, w}, "gradA");
          p.gaNew = f({B, w}, "gradANew");
        }
        if (pop.spec.kind == 2) p.gvPre = f({B, w}, "gradVPre");
        if (l == 0) widest = 0;  // data: no input gradient
        if (pop.recurrent) {
          p.gwRec = f({n, w}, "gradWeightRec");
          p.carried = f({B, w}, "gradZCarried");
          widest = std::max(widest, n);
        }
        const unsigned rowsPerWorker = core::worker_span_bound<unsigned>(unsigned(B), 6u, 1u);
        p.ownBits = var(poplar::UNSIGNED_CHAR,
                        {6 * std::size_t(core::packed_slice_bytes<unsigned>(rowsPerWorker, unsigned(w)))}, p.tile,
                        pn + "ownBits");
      }
      if (widest > 0) p.partial = f({widest * C}, "gradInputPartial");
    }
    if (pop.readout) {
      ReadoutTensors &r = net_.readout;
      r.gradWeight = whole(pop.parts, &Part::gwIn, 1);
      r.gradBias = whole(pop.parts, &Part::gBias, 0);
      r.gradBeta = whole(pop.parts, &Part::gBeta, 0);
      continue;
    }
    const std::string ln = popName(s_, l);
    pop.stepBits = layerBits(g_, s_, layout_.pops[l], n, ln + ".stepBits");
    if (pop.recurrent) pop.prevBits = layerBits(g_, s_, layout_.pops[l], n, ln + ".prevBits");
    LayerTensors &lt = net_.layers[l];
    lt.gradWeightIn = whole(pop.parts, &Part::gwIn, 1);
    lt.gradBias = whole(pop.parts, &Part::gBias, 0);
    if (pop.recurrent) lt.gradWeightRec = whole(pop.parts, &Part::gwRec, 1);
    if (pop.spec.learnDecay) lt.gradBeta = whole(pop.parts, &Part::gBeta, 0);
    if (pop.spec.learnThreshold) lt.gradThreshold = whole(pop.parts, &Part::gThreshold, 0);
  }
  // a listed layer's live bits, where a consumer tile lists by them (listsAt)
  for (std::size_t l = 0; l < L; ++l) {
    Pop &pop = pops_[l];
    bool used = false;
    for (const Pop *cons : {&pops_[l + 1], &pop})
      for (const Part &p : cons->parts) used = used || listsAt(pop, p);
    if (used) pop.liveBits = layerBits(g_, s_, layout_.pops[l], pop.n, popName(s_, l) + ".liveBits");
    pop.live = used;
  }
  // the first reduction stage's buffers: member k of a group sums chunk k
  for (std::size_t l = 0; l <= L; ++l) {
    Pop &cons = pops_[l];
    auto stage = [&](const Pop &dest) {
      const Tree t = treeOf(cons.parts, dest.parts);
      for (const auto &g : t.groups)
        for (std::size_t k = 0; k < t.chunks.size(); ++k) {
          Part &m = cons.parts[g.begin + k];
          const std::size_t len = t.neurons[k].size() * C;
          if (m.stageLen < len) m.stageLen = len;
        }
    };
    if (l > 0) stage(pops_[l - 1]);
    if (cons.recurrent) stage(cons);
    for (Part &m : cons.parts)
      if (m.stageLen > 0)
        m.stage = var(poplar::FLOAT, {m.stageLen}, m.tile, "stage" + std::to_string(l) + ".tile" + std::to_string(m.tile));
  }
  // the output's gradient [T, B, n_out] (given, or laid out as the trace) and its step
  const std::size_t T = s_.steps, N = s_.readout;
  Tensor grad;
  if (given_.gradOutput) {
    checkGiven(*given_.gradOutput, poplar::FLOAT, T * B * N, "output gradient");
    grad = given_.gradOutput->reshape({T, B * N});
  } else {
    std::vector<Tensor> pieces;
    for (std::size_t j = 0; j < outRanges_.size(); ++j)
      pieces.push_back(var(poplar::FLOAT, {T, outRanges_[j].size()}, outTiles_[j],
                           "trace.tile" + std::to_string(j) + ".gradOutput"));
    grad = poplar::concat(pieces, 1);
  }
  std::vector<std::size_t> at;
  for (const auto &r : outRanges_) at.push_back(r.begin);
  at.push_back(B * N);
  gradPieces_ = slices(grad, 1, at);
  for (std::size_t j = 0; j < outRanges_.size(); ++j) {
    const std::size_t k = outRanges_[j].size();
    const unsigned t = outTiles_[j];
    const std::string pn = "trace.tile" + std::to_string(t) + ".";
    gradStep_.push_back(var(poplar::FLOAT, {k}, t, pn + "gradOutputStep"));
    vPrevStep_.push_back(var(poplar::FLOAT, {k}, t, pn + "vPrevStep"));
  }
  net_.gradOutput = grad.reshape({T, B, N});
}

// Everything the build's programs use: `steps` (forward steps run) and
// `backSteps` (backward steps run) say which per-step tensors it needs.
void Builder::allocate(bool steps, bool backSteps) {
  layout_ = layoutOf(s_, g_.getTarget().getNumTiles());
  const std::size_t B = s_.batch, L = s_.layers.size();
  net_.layers.resize(L);
  for (std::size_t l = 0; l <= L; ++l) {
    Pop pop;
    pop.readout = l == L;
    pop.n = pop.readout ? s_.readout : s_.layers[l].size;
    if (!pop.readout) {
      pop.spec = s_.layers[l];
      pop.recurrent = pop.spec.recurrent;
    }
    for (const PartLayout &pl : layout_.pops[l]) {
      Part p;
      static_cast<PartLayout &>(p) = pl;
      if (!pop.readout && (steps || backSteps))
        p.scratch = var(poplar::FLOAT, {B, p.width()}, p.tile, partName(s_, l, p) + "scratch");
      pop.parts.push_back(p);
      (pop.readout ? net_.readout.tiles : net_.layers[l].tiles).push_back(p.tile);
    }
    pops_.push_back(std::move(pop));
  }
  outRanges_ = layout_.outRanges;
  for (std::size_t j = 0; j < outRanges_.size(); ++j) outTiles_.push_back(unsigned(j));
  takeInputs();
  takeCarried();
  const std::size_t T = s_.steps, nb = (s_.inputs + 7) / 8;
  std::vector<Tensor> outs;
  for (const Tensor &piece : outPieces_) outs.push_back(piece.slice(0, T, 0));
  net_.output = poplar::concat(outs, 1).reshape({T, B, std::size_t(s_.readout)});
  const auto &first = pops_[0].parts;
  inStep_ = g_.addVariable(poplar::UNSIGNED_CHAR, {B, nb}, {"inputStep"});
  for (std::size_t b = 0; b < B; ++b) g_.setTileMapping(inStep_[b], first[b % first.size()].tile);
  counter_ = var(poplar::UNSIGNED_INT, {1}, 0, "step");
  if (steps) allocateStepScratch(pass_ == Pass::Forward);
  if (backSteps) allocateBackward();
  if (s_.offchipSlots > 0)  // a row of each is what a Store/Load copy moves (actions())
    for (std::size_t l = 0; l <= L; ++l) {
      Pop &pop = pops_[l];
      for (Part &p : pop.parts) {
        const std::string pn = partName(s_, l, p);
        auto remote = [&](const std::string &name, const Tensor &row) {
          if (remote_) return remote_(name, row, s_.offchipSlots);
          if (pass_ == Pass::Backward)
            throw std::invalid_argument("network graph: the backward build needs the forward build's remote buffers");
          return g_.addRemoteBuffer(name, row.elementType(), row.numElements(), s_.offchipSlots);
        };
        p.remoteV = remote(pn + "remoteV", p.v.flatten());
        if (pop.spec.twoStates()) p.remoteA = remote(pn + "remoteA", p.a.flatten());
        if (pop.recurrent && p.bytes() > 0)
          p.remoteBits = remote(pn + "remoteBits", pop.stateBits.slice(p.kb0, p.kb1, 1).flatten());
      }
    }
}

void Builder::stepCount(program::Sequence &seq, int delta) {
  poplar::ComputeSet cs = g_.addComputeSet({delta > 0 ? "stepUp" : "stepDown"});
  poplar::VertexRef v = vertex(cs, "StepCount", 0);
  g_.connect(v["step"], counter_[0]);
  g_.setInitialValue(v["delta"], delta);
  seq.add(program::Execute(cs));
}

void Builder::stepLoad(poplar::ComputeSet cs, const Tensor &src, const Tensor &dst, unsigned tile,
                       std::size_t slots, std::size_t offset) {
  const std::string type = dst.elementType() == poplar::UNSIGNED_CHAR ? "StepLoad<unsigned char>" : "StepLoad<float>";
  poplar::VertexRef v = vertex(cs, type, tile);
  g_.connect(v["src"], src.flatten());
  g_.connect(v["dst"], dst.flatten());
  g_.connect(v["step"], counter_[0]);
  g_.setInitialValue(v["slots"], slots);
  g_.setInitialValue(v["rows"], 1);
  g_.setInitialValue(v["rowStride"], 0);
  g_.setInitialValue(v["stepStride"], dst.numElements());
  g_.setInitialValue(v["offset"], offset);
}

void Builder::stepStore(poplar::ComputeSet cs, const Tensor &src, const Tensor &dst, unsigned tile,
                        std::size_t slots) {
  const std::string type = src.elementType() == poplar::UNSIGNED_CHAR ? "StepStore<unsigned char>" : "StepStore<float>";
  poplar::VertexRef v = vertex(cs, type, tile);
  g_.connect(v["src"], src.flatten());
  g_.connect(v["dst"], dst.flatten());
  g_.connect(v["step"], counter_[0]);
  g_.setInitialValue(v["slots"], slots);
}

program::Sequence Builder::forwardStep(bool tape) {
  program::Sequence seq({}, {tape ? "forwardStepTaped" : "forwardStep"});
  const std::size_t B = s_.batch, L = spiking();
  poplar::ComputeSet input = g_.addComputeSet({"inputStep"});
  const auto &first = pops_[0].parts;
  for (std::size_t b = 0; b < B; ++b)
    stepLoad(input, net_.inputBits[b], inStep_[b], first[b % first.size()].tile, s_.steps);
  seq.add(program::Execute(input));
  const Tensor inFlat = inStep_.flatten();
  for (std::size_t l = 0; l <= L; ++l) {
    Pop &pop = pops_[l];
    const std::string ln = pop.readout ? "readout" : "layer" + std::to_string(l);
    const Tensor in = l == 0 ? inFlat : pops_[l - 1].newBits.flatten();
    const Tensor rec = pop.recurrent ? pop.stateBits.flatten() : in;
    poplar::ComputeSet products = g_.addComputeSet({ln + ".current"});
    poplar::ComputeSet neuron = g_.addComputeSet({ln + ".neuron"});
    for (Part &p : pop.parts) {
      poplar::VertexRef c = vertex(products, "BitsMatmulForward<float>", p.tile);
      g_.connect(c["bits"], in);
      g_.connect(c["weight"], p.wIn.flatten());
      g_.connect(c["bitsRec"], rec);
      g_.connect(c["weightRec"], (pop.recurrent ? p.wRec : p.wIn).flatten());
      g_.connect(c["bias"], p.bias);
      g_.connect(c["out"], p.current.flatten());
      g_.setInitialValue(c["numInputs"], nIn(l));
      g_.setInitialValue(c["numRec"], pop.recurrent ? pop.n : 0);
      if (pop.readout) {
        poplar::VertexRef v = vertex(neuron, "LeakyIntegrate<float>", p.tile);
        g_.connect(v["current"], p.current.flatten());
        g_.connect(v["vPrev"], p.v.flatten());
        g_.connect(v["beta"], p.beta);
        g_.connect(v["vNew"], p.vNew.flatten());
        continue;
      }
      poplar::VertexRef v = vertex(neuron, "NeuronForward<float>", p.tile);
      g_.connect(v["current"], p.current.flatten());
      g_.connect(v["vPrev"], p.v.flatten());
      const bool two = pop.spec.twoStates();
      g_.connect(v["aPrev"], (two ? p.a : p.v).flatten());  // LIF: not read
      g_.connect(v["beta"], p.beta);
      g_.connect(v["rho"], two ? p.rho : p.beta);  // LIF: not read
      g_.connect(v["vNew"], p.vNew.flatten());
      g_.connect(v["aNew"], (two ? p.aNew : p.scratch).flatten());
      g_.connect(v["z"], p.zNew.flatten());
      g_.connect(v["d"], p.d.flatten());
      g_.connect(v["thresholds"], pop.spec.learnThreshold ? p.threshold : p.beta);  // else not read
      g_.setInitialValue(v["perNeuron"], pop.spec.learnThreshold ? 1 : 0);
      g_.setInitialValue(v["threshold"], pop.spec.threshold);
      g_.setInitialValue(v["adaptStrength"], pop.spec.adaptStrength);
      g_.setInitialValue(v["scale"], pop.spec.scale);
      g_.setInitialValue(v["reset"], pop.spec.reset);
      g_.setInitialValue(v["surrogate"], pop.spec.surrogate);
      g_.setInitialValue(v["kind"], pop.spec.kind);
      g_.setInitialValue(v["colBegin"], 0);
      g_.setInitialValue(v["colEnd"], p.width());
    }
    seq.add(program::Execute(products));
    seq.add(program::Execute(neuron));
    if (pop.readout) continue;
    // the step's spikes as bits, byte k by the tile of neuron 8k (z of up to 7 neighbours exchanged)
    poplar::ComputeSet pack = g_.addComputeSet({ln + ".pack"});
    for (Part &p : pop.parts) {
      if (p.bytes() == 0) continue;
      const std::size_t z0 = 8 * p.kb0, z1 = std::min(8 * p.kb1, pop.n);
      poplar::VertexRef k = vertex(pack, "PackSpikes<float>", p.tile);
      g_.connect(k["z"], columns(pop, &Part::zNew, z0, z1).flatten());
      g_.connect(k["bits"], pop.newBits.slice(p.kb0, p.kb1, 1).flatten());
      g_.setInitialValue(k["numNeurons"], z1 - z0);
    }
    seq.add(program::Execute(pack));
  }
  // The step's tape and trace, then the new state.
  poplar::ComputeSet store = g_.addComputeSet({"storeStep"});
  for (std::size_t l = 0; l < L; ++l) {
    Pop &pop = pops_[l];
    for (Part &p : pop.parts) {
      if (tape) {
        stepStore(store, p.d, p.tapeD, p.tile, s_.tapeSlots);
        if (pop.spec.learnDecay) stepStore(store, p.v, p.tapeVPrev, p.tile, s_.tapeSlots);  // v(n - 1): not yet copied
        if (p.bytes() > 0) {
          stepStore(store, pop.newBits.slice(p.kb0, p.kb1, 1), p.tapeBits, p.tile, s_.tapeSlots);
          if (pop.recurrent)
            stepStore(store, pop.stateBits.slice(p.kb0, p.kb1, 1), p.tapePrevBits, p.tile, s_.tapeSlots);
        }
      }
      if (pass_ != Pass::Forward) continue;  // the spike counts are the forward's output
      poplar::VertexRef a = vertex(store, "AccumulateRows<float>", p.tile);
      g_.connect(a["x"], p.zNew.flatten());
      g_.connect(a["acc"], p.spikeCount.flatten());
      g_.setInitialValue(a["rows"], 1);
    }
  }
  const Tensor trace = whole(readout().parts, &Part::vNew, 1).flatten();
  for (std::size_t j = 0; j < outPieces_.size(); ++j)
    stepStore(store, trace.slice(outRanges_[j].begin, outRanges_[j].end, 0), outPieces_[j], outTiles_[j], s_.steps + 1);
  seq.add(program::Execute(store));
  for (Pop &pop : pops_)
    for (Part &p : pop.parts) {
      seq.add(program::Copy(p.vNew, p.v));
      if (pop.spec.twoStates()) seq.add(program::Copy(p.aNew, p.a));
      if (pop.recurrent && p.bytes() > 0)
        seq.add(program::Copy(pop.newBits.slice(p.kb0, p.kb1, 1), pop.stateBits.slice(p.kb0, p.kb1, 1)));
    }
  stepCount(seq, +1);
  return seq;
}

void Builder::gradWeight(poplar::ComputeSet cs, const Tensor &bits, std::size_t n, Part &p, const Tensor &acc) {
  poplar::VertexRef v = vertex(cs, "BitsMatmulGradWeight<float>", p.tile);
  g_.connect(v["bits"], bits);
  g_.connect(v["gradOut"], p.gc.flatten());
  g_.connect(v["gradWeight"], acc.flatten());
  g_.setInitialValue(v["numInputs"], n);
}

// The gradient of a product's input (n neurons of `dest`) from the consumer's
// gradCurrent, into dest's `into` [B, w]: per pass of samples, each consumer
// tile's dense partial, summed in two stages (Tree). For a listed dest only at
// its neurons of non-zero d (ListedGradInput over dest.liveBits, listsAt), 0 elsewhere.
void Builder::gradInput(program::Sequence &seq, Pop &cons, Tensor Part::*weight, std::size_t n, Pop &dest,
                        Tensor Part::*into, const std::string &name) {
  const std::size_t B = s_.batch, C = passSize();
  const Tree tree = treeOf(cons.parts, dest.parts);
  for (std::size_t b0 = 0; b0 < B; b0 += C) {
    const std::size_t b1 = std::min(B, b0 + C), rows = b1 - b0;
    const std::string pn = name + ".pass" + std::to_string(b0 / C);
    poplar::ComputeSet gi = g_.addComputeSet({pn});
    for (Part &p : cons.parts) {
      const bool listed = listsAt(dest, p);  // dest.liveBits holds the step's d != 0 (backwardStep)
      poplar::VertexRef v = vertex(gi, listed ? "ListedGradInput<float>" : "DenseGradInput<float>", p.tile);
      g_.connect(v["weight"], (p.*weight).flatten());
      g_.connect(v["gradOut"], p.gc.slice(b0, b1, 0).flatten());
      if (listed) g_.connect(v["live"], dest.liveBits.slice(b0, b1, 0).flatten());
      g_.connect(v["partial"], p.partial.slice(0, n * rows, 0));
      g_.setInitialValue(v["numInputs"], n);
    }
    poplar::ComputeSet first = g_.addComputeSet({pn + ".groups"});
    for (const auto &grp : tree.groups)
      for (std::size_t k = 0; k < tree.chunks.size(); ++k) {
        const auto &r = tree.neurons[k];
        std::vector<Tensor> pieces;
        for (std::size_t m = grp.begin; m < grp.end; ++m)
          pieces.push_back(cons.parts[m].partial.slice(r.begin * rows, r.end * rows, 0));
        Part &member = cons.parts[grp.begin + k];
        poplar::VertexRef v = vertex(first, "SumParts<float>", member.tile);
        g_.connect(v["parts"], poplar::concat(pieces));
        g_.connect(v["out"], member.stage.slice(0, r.size() * rows, 0));
        g_.setInitialValue(v["numParts"], grp.size());
      }
    poplar::ComputeSet second = g_.addComputeSet({pn + ".sum"});
    for (std::size_t k = 0; k < tree.chunks.size(); ++k) {
      const auto &r = tree.neurons[k];
      for (std::size_t q = tree.chunks[k].begin; q < tree.chunks[k].end; ++q) {
        Part &d = dest.parts[q];
        std::vector<Tensor> pieces;
        for (const auto &grp : tree.groups)
          pieces.push_back(cons.parts[grp.begin + k].stage.slice((d.c0 - r.begin) * rows, (d.c1 - r.begin) * rows, 0));
        poplar::VertexRef v = vertex(second, "ReduceSlices<float>", d.tile);
        g_.connect(v["parts"], poplar::concat(pieces));
        g_.connect(v["out"], (d.*into).flatten());
        g_.setInitialValue(v["numParts"], tree.groups.size());
        g_.setInitialValue(v["width"], d.width());
        g_.setInitialValue(v["rowBegin"], b0);
      }
    }
    seq.add(program::Execute(gi));
    seq.add(program::Execute(first));
    seq.add(program::Execute(second));
  }
}

program::Sequence Builder::backwardStep() {
  program::Sequence seq({}, {"backwardStep"});
  const std::size_t B = s_.batch, L = spiking();
  // The step's tape, input, trace gradient and v(n - 1) out of their slots.
  poplar::ComputeSet load = g_.addComputeSet({"loadStep"});
  for (std::size_t l = 0; l < L; ++l) {
    Pop &pop = pops_[l];
    for (Part &p : pop.parts) {
      stepLoad(load, p.tapeD, p.dStep, p.tile, s_.tapeSlots);
      if (pop.spec.learnDecay) stepLoad(load, p.tapeVPrev, p.vPrevStep, p.tile, s_.tapeSlots);
      if (p.bytes() == 0) continue;
      stepLoad(load, p.tapeBits, pop.stepBits.slice(p.kb0, p.kb1, 1), p.tile, s_.tapeSlots);
      if (pop.recurrent) stepLoad(load, p.tapePrevBits, pop.prevBits.slice(p.kb0, p.kb1, 1), p.tile, s_.tapeSlots);
    }
  }
  const auto &first = pops_[0].parts;
  for (std::size_t b = 0; b < B; ++b)
    stepLoad(load, net_.inputBits[b], inStep_[b], first[b % first.size()].tile, s_.steps);
  for (std::size_t j = 0; j < outPieces_.size(); ++j) {
    stepLoad(load, gradPieces_[j], gradStep_[j], outTiles_[j], s_.steps);
    stepLoad(load, outPieces_[j], vPrevStep_[j], outTiles_[j], s_.steps + 1, s_.steps);
  }
  seq.add(program::Execute(load));
  // Listed layers: which neurons of the step can take a gradient (d != 0), as bits, byte k by the
  // tile of neuron 8k (d of up to 7 neighbours exchanged), read whole by the consumer tiles.
  poplar::ComputeSet live = g_.addComputeSet({"liveBits"});
  bool anyListed = false;
  for (std::size_t l = 0; l < L; ++l) {
    Pop &pop = pops_[l];
    if (!pop.live) continue;
    anyListed = true;
    const Tensor d = whole(pop.parts, &Part::dStep, 1);
    for (Part &p : pop.parts) {
      if (p.bytes() == 0) continue;
      const std::size_t z0 = 8 * p.kb0, z1 = std::min(8 * p.kb1, pop.n);
      poplar::VertexRef k = vertex(live, "PackSpikes<float>", p.tile);
      g_.connect(k["z"], d.slice(z0, z1, 1).flatten());
      g_.connect(k["bits"], pop.liveBits.slice(p.kb0, p.kb1, 1).flatten());
      g_.setInitialValue(k["numNeurons"], z1 - z0);
    }
  }
  if (anyListed) seq.add(program::Execute(live));
  // The readout: its step backward, weight gradient, and the gradient of the last layer's spikes.
  Pop &r = readout();
  const Tensor gradTrace = poplar::concat(gradStep_).reshape({B, std::size_t(s_.readout)});
  const Tensor vPrev = poplar::concat(vPrevStep_).reshape({B, std::size_t(s_.readout)});
  poplar::ComputeSet rb = g_.addComputeSet({"readout.backward"});
  poplar::ComputeSet rw = g_.addComputeSet({"readout.gradWeight"});
  for (Part &p : r.parts) {
    poplar::VertexRef v = vertex(rb, "LeakyIntegrateBackward<float>", p.tile);
    g_.connect(v["gradOut"], gradTrace.slice(p.c0, p.c1, 1).flatten());
    g_.connect(v["vPrev"], vPrev.slice(p.c0, p.c1, 1).flatten());
    g_.connect(v["beta"], p.beta);
    g_.connect(v["carried"], p.gv.flatten());
    g_.connect(v["gradCurrent"], p.gc.flatten());
    g_.connect(v["gradBeta"], p.gBeta);
    g_.connect(v["gradBias"], p.gBias);
    gradWeight(rw, pops_[L - 1].stepBits.flatten(), pops_[L - 1].n, p, p.gwIn);
  }
  seq.add(program::Execute(rb));
  seq.add(program::Execute(rw));
  gradInput(seq, r, &Part::wIn, pops_[L - 1].n, pops_[L - 1], &Part::fromAbove, "readout.gradInput");
  for (std::size_t l = L; l-- > 0;) {
    Pop &pop = pops_[l];
    const std::string ln = "layer" + std::to_string(l);
    // gradient w.r.t. z(n): from above (the next layer or the readout), and the recurrent one from step
    // n + 1, formed here from gradCurrent, which still holds step n + 1's (0 before the first step), so
    // that a listed layer lists it by step n's d
    if (pop.recurrent) {
      gradInput(seq, pop, &Part::wRec, pop.n, pop, &Part::carried, ln + ".gradRecurrent");
      poplar::ComputeSet cs = g_.addComputeSet({ln + ".gradZ"});
      for (Part &p : pop.parts) {
        poplar::VertexRef v = vertex(cs, "AccumulateRows<float>", p.tile);
        g_.connect(v["x"], p.carried.flatten());
        g_.connect(v["acc"], p.fromAbove.flatten());
        g_.setInitialValue(v["rows"], 1);
      }
      seq.add(program::Execute(cs));
    }
    poplar::ComputeSet neuron = g_.addComputeSet({ln + ".neuronBackward"});
    for (Part &p : pop.parts) {
      poplar::VertexRef v = vertex(neuron, "NeuronBackward<float>", p.tile);
      g_.connect(v["gradZ"], p.fromAbove.flatten());
      g_.connect(v["gradV"], p.gv.flatten());
      const bool two = pop.spec.twoStates();
      g_.connect(v["gradA"], (two ? p.ga : p.gv).flatten());  // LIF: not read
      g_.connect(v["bits"], pop.stepBits.slice(p.c0 / 8, (p.c1 + 7) / 8, 1).flatten());
      g_.connect(v["d"], p.dStep.flatten());
      g_.connect(v["beta"], p.beta);
      g_.connect(v["rho"], two ? p.rho : p.beta);  // LIF: not read
      g_.connect(v["gradCurrent"], p.gc.flatten());
      g_.connect(v["gradVPrev"], p.gvNew.flatten());
      g_.connect(v["gradAPrev"], (two ? p.gaNew : p.scratch).flatten());
      g_.connect(v["gradVPre"], (pop.spec.kind == 2 ? p.gvPre : p.scratch).flatten());  // CUBA's gv
      g_.connect(v["ownBits"], p.ownBits);
      g_.setInitialValue(v["adaptStrength"], pop.spec.adaptStrength);
      g_.setInitialValue(v["reset"], pop.spec.reset);
      g_.setInitialValue(v["kind"], pop.spec.kind);
      g_.setInitialValue(v["colBegin"], p.c0);
      g_.setInitialValue(v["colEnd"], p.c1);
      g_.setInitialValue(v["ownSlice"], p.ownBits.numElements() / 6);
    }
    seq.add(program::Execute(neuron));
    // weight, bias, and learned decay and threshold gradients of the step, accumulated on the tiles (gv
    // still holds the gradient of v after step n's reset: the threshold's reads it)
    poplar::ComputeSet gw = g_.addComputeSet({ln + ".gradWeight"});
    const Tensor in = l == 0 ? inStep_.flatten() : pops_[l - 1].stepBits.flatten();
    const Tensor prev = pop.recurrent ? pop.prevBits.flatten() : Tensor();
    for (Part &p : pop.parts) {
      gradWeight(gw, in, nIn(l), p, p.gwIn);
      if (pop.recurrent) gradWeight(gw, prev, pop.n, p, p.gwRec);
      poplar::VertexRef a = vertex(gw, "AccumulateRows<float>", p.tile);
      g_.connect(a["x"], p.gc.flatten());
      g_.connect(a["acc"], p.gBias);
      g_.setInitialValue(a["rows"], B);
      if (pop.spec.learnDecay) {  // v = beta v(n - 1) + ...: += gv v(n - 1)
        poplar::VertexRef d = vertex(gw, "AccumulateProducts<float>", p.tile);
        g_.connect(d["x"], (pop.spec.kind == 2 ? p.gvPre : p.gc).flatten());
        g_.connect(d["y"], p.vPrevStep.flatten());
        g_.connect(d["acc"], p.gBeta);
      }
      if (pop.spec.learnThreshold) {
        poplar::VertexRef t = vertex(gw, "ThresholdGrad<float>", p.tile);
        g_.connect(t["gradVNew"], p.gv.flatten());
        g_.connect(t["gradV"], (pop.spec.kind == 2 ? p.gvPre : p.gc).flatten());  // gv: before the reset
        g_.connect(t["bits"], pop.stepBits.slice(p.c0 / 8, (p.c1 + 7) / 8, 1).flatten());
        g_.connect(t["gradThreshold"], p.gThreshold);
        g_.setInitialValue(t["colBegin"], p.c0);
      }
    }
    seq.add(program::Execute(gw));
    for (Part &p : pop.parts) {
      seq.add(program::Copy(p.gvNew, p.gv));
      if (pop.spec.twoStates()) seq.add(program::Copy(p.gaNew, p.ga));
    }
    // input gradients: to the layer below (step n) and to z(n - 1) (recurrent); layer 0's input is data
    if (l > 0) gradInput(seq, pop, &Part::wIn, nIn(l), pops_[l - 1], &Part::fromAbove, ln + ".gradInput");
  }
  stepCount(seq, -1);
  return seq;
}

void Builder::zero(program::Sequence &seq, const std::vector<std::pair<Tensor, unsigned>> &ts,
                   const std::string &name) {
  poplar::ComputeSet cs = g_.addComputeSet({name});
  for (const auto &[t, tile] : ts) {
    const bool bytes = t.elementType() == poplar::UNSIGNED_CHAR;
    poplar::VertexRef v = vertex(cs, bytes ? "ZeroFill<unsigned char>" : "ZeroFill<float>", tile);
    g_.connect(v["out"], t.flatten());
  }
  seq.add(program::Execute(cs));
}

program::Sequence Builder::actions(std::size_t begin, std::size_t end) {
  program::Sequence seq;
  for (std::size_t i = begin; i < end; ++i) {
    const Action &a = s_.actions[i];
    switch (a.kind) {
      case ActionKind::Advance:
        seq.add(program::Copy(constantStep(a.n0), counter_));
        seq.add(program::Repeat(a.n1 - a.n0, a.tape ? taped_ : step_));
        break;
      case ActionKind::Reverse: {
        std::size_t j = i;
        while (j + 1 < end && s_.actions[j + 1].kind == ActionKind::Reverse && s_.actions[j + 1].n0 + 1 == s_.actions[j].n0)
          ++j;
        seq.add(program::Copy(constantStep(a.n0), counter_));
        seq.add(program::Repeat(unsigned(j - i + 1), back_));
        i = j;
        break;
      }
      case ActionKind::Store: case ActionKind::Load:
        for (Pop &pop : pops_)
          for (Part &p : pop.parts) {
            const bool store = a.kind == ActionKind::Store, bits = pop.recurrent && p.bytes() > 0;
            const Tensor own = bits ? pop.stateBits.slice(p.kb0, p.kb1, 1).flatten() : Tensor();
            if (a.offchip) {
              const Tensor slot = constantStep(a.slot);
              seq.add(store ? program::Copy(p.v.flatten(), p.remoteV, slot) : program::Copy(p.remoteV, p.v.flatten(), slot));
              if (pop.spec.twoStates())
                seq.add(store ? program::Copy(p.a.flatten(), p.remoteA, slot) : program::Copy(p.remoteA, p.a.flatten(), slot));
              if (bits)
                seq.add(store ? program::Copy(own, p.remoteBits, slot) : program::Copy(p.remoteBits, own, slot));
            } else {
              seq.add(store ? program::Copy(p.v.flatten(), p.ckptV[a.slot]) : program::Copy(p.ckptV[a.slot], p.v.flatten()));
              if (pop.spec.twoStates())
                seq.add(store ? program::Copy(p.a.flatten(), p.ckptA[a.slot]) : program::Copy(p.ckptA[a.slot], p.a.flatten()));
              if (bits) seq.add(store ? program::Copy(own, p.ckptBits[a.slot]) : program::Copy(p.ckptBits[a.slot], own));
            }
          }
        break;
      case ActionKind::Free:
        break;
    }
  }
  return seq;
}

NetworkGraph Builder::build() {
  if (s_.layers.empty()) throw std::invalid_argument("the network op needs a spiking layer");
  if (s_.readout == 0) throw std::invalid_argument("the network op needs a readout neuron");
  std::size_t firstReverse = s_.actions.size();
  for (std::size_t i = 0; i < s_.actions.size(); ++i)
    if (s_.actions[i].kind == ActionKind::Reverse) {
      firstReverse = i;
      break;
    }
  // this build's actions, and which steps they run
  const bool forward = pass_ == Pass::Forward;
  const std::size_t begin = forward ? 0 : firstReverse, end = forward ? firstReverse : s_.actions.size();
  bool plain = false, taped = false, reverse = false;
  for (std::size_t i = begin; i < end; ++i) {
    const Action &a = s_.actions[i];
    if (a.kind == ActionKind::Advance) (a.tape ? taped : plain) = true;
    reverse |= a.kind == ActionKind::Reverse;
  }
  allocate(plain || taped, reverse);
  if (plain) step_ = forwardStep(false);
  if (taped) taped_ = forwardStep(true);
  if (reverse) back_ = backwardStep();
  std::vector<std::pair<Tensor, unsigned>> zeroed;  // the forward's state, or the backward's accumulators
  for (Pop &pop : pops_)
    for (Part &p : pop.parts) {
      if (forward) {
        zeroed.emplace_back(p.v, p.tile);
        if (pop.spec.twoStates()) zeroed.emplace_back(p.a, p.tile);
        if (pop.readout) continue;
        zeroed.emplace_back(p.spikeCount, p.tile);
        if (pop.recurrent && p.bytes() > 0) zeroed.emplace_back(pop.stateBits.slice(p.kb0, p.kb1, 1), p.tile);
        continue;
      }
      if (!reverse) continue;
      for (const Tensor *t : {&p.gv, &p.gwIn, &p.gBias}) zeroed.emplace_back(*t, p.tile);
      if (pop.readout) {
        zeroed.emplace_back(p.gBeta, p.tile);
        continue;
      }
      if (pop.recurrent)  // gc: step n + 1's gradCurrent at step n (backwardStep), 0 at the first
        for (const Tensor *t : {&p.gwRec, &p.gc}) zeroed.emplace_back(*t, p.tile);
      if (pop.spec.learnDecay) zeroed.emplace_back(p.gBeta, p.tile);
      if (pop.spec.twoStates()) zeroed.emplace_back(p.ga, p.tile);
      if (pop.spec.learnThreshold) zeroed.emplace_back(p.gThreshold, p.tile);
    }
  if (forward) {
    for (std::size_t j = 0; j < outPieces_.size(); ++j) zeroed.emplace_back(outPieces_[j][s_.steps], outTiles_[j]);
    net_.forward = program::Sequence({}, {"networkForward"});
    zero(net_.forward, zeroed, "zeroState");
    net_.forward.add(actions(begin, end));
  } else {
    net_.backward = program::Sequence({}, {"networkBackward"});
    if (!zeroed.empty()) zero(net_.backward, zeroed, "zeroGradients");
    net_.backward.add(actions(begin, end));
  }
  return net_;
}

}  // namespace

std::vector<unsigned> layerTiles(const NetworkSpec &spec, unsigned numTiles) {
  std::vector<std::size_t> sizes;
  for (const LayerSpec &l : spec.layers) sizes.push_back(l.size);
  sizes.push_back(spec.readout);
  std::size_t total = 0;
  for (std::size_t n : sizes) total += n;
  std::vector<unsigned> tiles;
  for (std::size_t n : sizes) {
    const std::size_t share = total <= numTiles ? n : std::max<std::size_t>(1, n * numTiles / total);
    tiles.push_back(unsigned(std::min<std::size_t>(n, share)));
  }
  return tiles;
}

std::vector<CarriedShape> carriedShapes(const NetworkSpec &spec) {
  const std::size_t B = spec.batch, S = spec.tapeSlots, K = spec.localSlots, T = spec.steps;
  std::vector<CarriedShape> shapes;
  for (const CarriedRef &ref : carriedRefs(spec)) {
    const std::size_t n = ref.pop == spec.layers.size() ? spec.readout : spec.layers[ref.pop].size, nb = (n + 7) / 8;
    switch (ref.kind) {
      case Carry::V: case Carry::A: shapes.push_back({false, {B * n}}); break;
      case Carry::StateBits: shapes.push_back({true, {B * nb}}); break;
      case Carry::TapeD: case Carry::TapeVPrev: shapes.push_back({false, {S * B * n}}); break;
      case Carry::TapeBits: case Carry::TapePrevBits: shapes.push_back({true, {S * B * nb}}); break;
      case Carry::CheckpointV: case Carry::CheckpointA: shapes.push_back({false, {K * B * n}}); break;
      case Carry::CheckpointBits: shapes.push_back({true, {K * B * nb}}); break;
      case Carry::Trace: shapes.push_back({false, {(T + 1) * B * n}}); break;
    }
  }
  return shapes;
}

std::size_t inputCount(const NetworkSpec &spec) { return 1 + paramRefs(spec).size(); }

poplar::Tensor createInput(poplar::Graph &graph, const NetworkSpec &spec, std::size_t index) {
  if (index >= inputCount(spec))
    throw std::invalid_argument("network graph: the op has no input " + std::to_string(index));
  return makeInput(graph, spec, layoutOf(spec, graph.getTarget().getNumTiles()), index);
}

NetworkGraph buildNetwork(poplar::Graph &graph, const NetworkSpec &spec, Pass pass, const NetworkTensors &given,
                          const RemoteBufferMaker &remoteBuffer) {
  return Builder(graph, spec, pass, given, remoteBuffer).build();
}

}  // namespace network
}  // namespace ipu_snn
