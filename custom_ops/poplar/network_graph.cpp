// The network op's graph (see network_graph.hpp). Poplar calls only; every
// vertex is a codelet of neuron_codelets.cpp or network_codelets.cpp.
#include "network_graph.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

#include "tile_split.hpp"
#include "work_split.h"

namespace ipu_snn {
namespace network {
namespace {

using poplar::Tensor;
namespace program = poplar::program;

// One tile's share of a population: its columns and everything it keeps for them.
struct Part {
  unsigned tile;
  std::size_t c0, c1;
  std::size_t kb0 = 0, kb1 = 0;  // the bytes of the layer's spike bits this tile writes (neurons 8k on it)
  std::size_t width() const { return c1 - c0; }
  std::size_t bytes() const { return kb1 - kb0; }
  Tensor wIn, bias, beta, wRec;              // parameters
  Tensor gwIn, gBias, gwRec, gBeta;          // gradients, accumulated
  Tensor v, vNew, zNew, d, current, scratch, spikeCount;  // state and one step
  Tensor tapeD, tapeBits, tapePrevBits;      // [S, B, w], [S, B, kb]
  Tensor ckptV, ckptBits;                    // [localSlots, ...]
  poplar::RemoteBuffer remoteV, remoteBits;  // offchip slots
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
  Builder(poplar::Graph &g, const NetworkSpec &s, const RemoteBufferMaker &remote)
      : g_(g), s_(s), remote_(remote) {}
  NetworkGraph build();

private:
  poplar::Graph &g_;
  const NetworkSpec &s_;
  const RemoteBufferMaker &remote_;
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
    Tensor t = g_.addVariable(type, shape, {name});
    g_.setTileMapping(t, tile);
    return t;
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
  Tensor layerBits(const Pop &pop, const std::string &name);
  void allocate();
  void allocateCarried();
  void allocateOutput();
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

// A layer's spike bits [B, ceil(n / 8)]: byte k of every row on the tile that owns neuron 8k.
Tensor Builder::layerBits(const Pop &pop, const std::string &name) {
  const std::size_t nb = (pop.n + 7) / 8;
  Tensor t = g_.addVariable(poplar::UNSIGNED_CHAR, {std::size_t(s_.batch), nb}, {name});
  for (std::size_t b = 0; b < s_.batch; ++b)
    for (const Part &p : pop.parts)
      if (p.bytes() > 0) g_.setTileMapping(t[b].slice(p.kb0, p.kb1, 0), p.tile);
  return t;
}

void Builder::allocate() {
  const unsigned numTiles = g_.getTarget().getNumTiles();
  const std::vector<unsigned> tiles = layerTiles(s_, numTiles);
  const std::size_t B = s_.batch, S = s_.tapeSlots, C = passSize();
  const std::size_t L = s_.layers.size();
  unsigned next = 0;
  for (std::size_t l = 0; l <= L; ++l) {
    Pop pop;
    pop.readout = l == L;
    pop.n = pop.readout ? s_.readout : s_.layers[l].size;
    if (!pop.readout) {
      pop.spec = s_.layers[l];
      pop.recurrent = pop.spec.recurrent;
    }
    const std::size_t n = pop.n, nin = nIn(l);
    const auto ranges = tiling::splitEven(n, tiles[l]);
    const std::string ln = pop.readout ? "readout" : "layer" + std::to_string(l);
    for (std::size_t j = 0; j < ranges.size(); ++j) {
      Part p;
      p.tile = next + unsigned(j);
      p.c0 = ranges[j].begin;
      p.c1 = ranges[j].end;
      p.kb0 = (p.c0 + 7) / 8;
      p.kb1 = (p.c1 + 7) / 8;
      const std::size_t w = p.width(), kb = p.bytes();
      const unsigned t = p.tile;
      const std::string pn = ln + ".tile" + std::to_string(t) + ".";
      auto f = [&](std::vector<std::size_t> shape, const std::string &name) {
        return var(poplar::FLOAT, shape, t, pn + name);
      };
      p.wIn = f({nin, w}, "weightIn");
      p.gwIn = f({nin, w}, "gradWeightIn");
      p.bias = f({w}, "bias");
      p.gBias = f({w}, "gradBias");
      p.beta = f({w}, "beta");
      for (auto [member, name] : {std::pair{&Part::v, "v"}, {&Part::vNew, "vNew"}, {&Part::current, "current"},
                                  {&Part::gc, "gradCurrent"}, {&Part::gv, "gradV"}})
        p.*member = f({B, w}, name);
      std::size_t widest = nin;  // the partial's neurons: the largest input it takes the gradient of
      if (pop.readout) {
        p.gBeta = f({w}, "gradBeta");
      } else {
        for (auto [member, name] : {std::pair{&Part::zNew, "zNew"}, {&Part::d, "d"}, {&Part::scratch, "scratch"},
                                    {&Part::dStep, "dStep"}, {&Part::gvNew, "gradVNew"},
                                    {&Part::spikeCount, "spikeCount"}, {&Part::fromAbove, "gradZ"}})
          p.*member = f({B, w}, name);
        if (l == 0) widest = 0;  // data: no input gradient
        if (pop.recurrent) {
          p.wRec = f({n, w}, "weightRec");
          p.gwRec = f({n, w}, "gradWeightRec");
          p.carried = f({B, w}, "gradZCarried");
          widest = std::max(widest, n);
        }
        p.tapeD = f({S, B, w}, "tapeD");
        if (kb > 0) {
          p.tapeBits = var(poplar::UNSIGNED_CHAR, {S, B, kb}, t, pn + "tapeBits");
          if (pop.recurrent) p.tapePrevBits = var(poplar::UNSIGNED_CHAR, {S, B, kb}, t, pn + "tapePrevBits");
        }
        const unsigned rowsPerWorker = core::worker_span_bound<unsigned>(unsigned(B), 6u, 1u);
        p.ownBits = var(poplar::UNSIGNED_CHAR,
                        {6 * std::size_t(core::packed_slice_bytes<unsigned>(rowsPerWorker, unsigned(w)))}, t,
                        pn + "ownBits");
      }
      if (widest > 0) p.partial = f({widest * C}, "gradInputPartial");
      if (s_.localSlots > 0) {
        p.ckptV = f({s_.localSlots, B * w}, "checkpointV");
        if (pop.recurrent && kb > 0)
          p.ckptBits = var(poplar::UNSIGNED_CHAR, {s_.localSlots, B * kb}, t, pn + "checkpointBits");
      }
      pop.parts.push_back(p);
    }
    next += tiles[l];
    if (!pop.readout) {
      pop.newBits = layerBits(pop, ln + ".bits");
      pop.stepBits = layerBits(pop, ln + ".stepBits");
      if (pop.recurrent) {
        pop.stateBits = layerBits(pop, ln + ".stateBits");
        pop.prevBits = layerBits(pop, ln + ".prevBits");
      }
      pop.zNewWhole = whole(pop.parts, &Part::zNew, 1);
    }
    if (s_.offchipSlots > 0)  // a row of each is what a Store/Load copy moves (actions())
      for (Part &p : pop.parts) {
        const std::string pn = ln + ".tile" + std::to_string(p.tile) + ".";
        auto remote = [&](const std::string &name, const Tensor &row) {
          return remote_ ? remote_(name, row, s_.offchipSlots)
                         : g_.addRemoteBuffer(name, row.elementType(), row.numElements(), s_.offchipSlots);
        };
        p.remoteV = remote(pn + "remoteV", p.v.flatten());
        if (pop.recurrent && p.bytes() > 0)
          p.remoteBits = remote(pn + "remoteBits", pop.stateBits.slice(p.kb0, p.kb1, 1).flatten());
      }
    pops_.push_back(std::move(pop));
  }
  // a listed layer's live bits, where a consumer tile lists by them (listsAt)
  for (std::size_t l = 0; l < L; ++l) {
    Pop &pop = pops_[l];
    bool used = false;
    for (const Pop *cons : {&pops_[l + 1], &pop})
      for (const Part &p : cons->parts) used = used || listsAt(pop, p);
    if (used) pop.liveBits = layerBits(pop, "layer" + std::to_string(l) + ".liveBits");
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
  for (std::size_t l = 0; l <= L; ++l) {
    const Pop &pop = pops_[l];
    if (pop.readout) {
      ReadoutTensors &r = net_.readout;
      r.weight = whole(pop.parts, &Part::wIn, 1);
      r.bias = whole(pop.parts, &Part::bias, 0);
      r.beta = whole(pop.parts, &Part::beta, 0);
      r.gradWeight = whole(pop.parts, &Part::gwIn, 1);
      r.gradBias = whole(pop.parts, &Part::gBias, 0);
      r.gradBeta = whole(pop.parts, &Part::gBeta, 0);
      for (const Part &p : pop.parts) r.tiles.push_back(p.tile);
      continue;
    }
    LayerTensors lt;
    lt.weightIn = whole(pop.parts, &Part::wIn, 1);
    lt.bias = whole(pop.parts, &Part::bias, 0);
    lt.beta = whole(pop.parts, &Part::beta, 0);
    lt.gradWeightIn = whole(pop.parts, &Part::gwIn, 1);
    lt.gradBias = whole(pop.parts, &Part::gBias, 0);
    if (pop.recurrent) {
      lt.weightRec = whole(pop.parts, &Part::wRec, 1);
      lt.gradWeightRec = whole(pop.parts, &Part::gwRec, 1);
    }
    lt.spikeCount = whole(pop.parts, &Part::spikeCount, 1);
    lt.state = pop.zNewWhole;
    for (const Part &p : pop.parts) lt.tiles.push_back(p.tile);
    net_.layers.push_back(lt);
  }
  const std::size_t nb = (s_.inputs + 7) / 8, T = s_.steps;
  const auto &first = pops_[0].parts;
  net_.inputBits = g_.addVariable(poplar::UNSIGNED_CHAR, {B, T, nb}, {"inputBits"});
  inStep_ = g_.addVariable(poplar::UNSIGNED_CHAR, {B, nb}, {"inputStep"});
  for (std::size_t b = 0; b < B; ++b) {
    g_.setTileMapping(net_.inputBits[b], first[b % first.size()].tile);
    g_.setTileMapping(inStep_[b], first[b % first.size()].tile);
  }
  allocateOutput();
  counter_ = var(poplar::UNSIGNED_INT, {1}, 0, "step");
  allocateCarried();
}

// NetworkGraph::carried, in carriedShapes' order (checked against it).
void Builder::allocateCarried() {
  auto joined = [](const Pop &pop, Tensor Part::*member, unsigned dim, bool bits) {
    std::vector<Tensor> ts;
    for (const Part &p : pop.parts)
      if (!bits || p.bytes() > 0) ts.push_back(p.*member);
    return poplar::concat(ts, dim);
  };
  const bool local = s_.localSlots > 0;
  for (const Pop &pop : pops_) {
    net_.carried.push_back(joined(pop, &Part::v, 1, false));
    if (pop.readout) {
      if (local) net_.carried.push_back(joined(pop, &Part::ckptV, 1, false));
      continue;
    }
    if (pop.recurrent) net_.carried.push_back(pop.stateBits);
    net_.carried.push_back(joined(pop, &Part::tapeD, 2, false));
    net_.carried.push_back(joined(pop, &Part::tapeBits, 2, true));
    if (pop.recurrent) net_.carried.push_back(joined(pop, &Part::tapePrevBits, 2, true));
    if (local) {
      net_.carried.push_back(joined(pop, &Part::ckptV, 1, false));
      if (pop.recurrent) net_.carried.push_back(joined(pop, &Part::ckptBits, 1, true));
    }
  }
  net_.carried.push_back(poplar::concat(outPieces_, 1));
  const auto shapes = carriedShapes(s_);
  if (shapes.size() != net_.carried.size())
    throw std::logic_error("network graph: carriedShapes disagrees with the carried tensors");
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    std::size_t n = 1;
    for (std::size_t d : shapes[i].shape) n *= d;
    const poplar::Type type = shapes[i].bits ? poplar::UNSIGNED_CHAR : poplar::FLOAT;
    if (n != net_.carried[i].numElements() || !(net_.carried[i].elementType() == type))
      throw std::logic_error("network graph: carriedShapes disagrees with carried tensor " + std::to_string(i));
  }
}

// The trace [T, B, n_out] and its gradient over every tile: tile j holds the
// (sample, neuron) pairs outRanges_[j] of every step.
void Builder::allocateOutput() {
  const std::size_t T = s_.steps, K = std::size_t(s_.batch) * s_.readout;
  const std::size_t H = std::min<std::size_t>(K, g_.getTarget().getNumTiles());
  outRanges_ = tiling::splitEven(K, H);
  std::vector<Tensor> outs, grads;
  for (std::size_t j = 0; j < H; ++j) {
    const std::size_t k = outRanges_[j].size();
    const unsigned t = unsigned(j);
    const std::string pn = "trace.tile" + std::to_string(t) + ".";
    outTiles_.push_back(t);
    outPieces_.push_back(var(poplar::FLOAT, {T + 1, k}, t, pn + "output"));
    gradPieces_.push_back(var(poplar::FLOAT, {T, k}, t, pn + "gradOutput"));
    gradStep_.push_back(var(poplar::FLOAT, {k}, t, pn + "gradOutputStep"));
    vPrevStep_.push_back(var(poplar::FLOAT, {k}, t, pn + "vPrevStep"));
    outs.push_back(outPieces_.back().slice(0, T, 0));
  }
  net_.output = poplar::concat(outs, 1).reshape({T, std::size_t(s_.batch), std::size_t(s_.readout)});
  net_.gradOutput = poplar::concat(gradPieces_, 1).reshape({T, std::size_t(s_.batch), std::size_t(s_.readout)});
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
      g_.connect(v["aPrev"], p.v.flatten());  // LIF: not read
      g_.connect(v["beta"], p.beta);
      g_.connect(v["rho"], p.beta);  // LIF: not read
      g_.connect(v["vNew"], p.vNew.flatten());
      g_.connect(v["aNew"], p.scratch.flatten());
      g_.connect(v["z"], p.zNew.flatten());
      g_.connect(v["d"], p.d.flatten());
      g_.setInitialValue(v["threshold"], pop.spec.threshold);
      g_.setInitialValue(v["adaptStrength"], 0.0f);
      g_.setInitialValue(v["scale"], pop.spec.scale);
      g_.setInitialValue(v["reset"], pop.spec.reset);
      g_.setInitialValue(v["surrogate"], pop.spec.surrogate);
      g_.setInitialValue(v["adaptive"], 0);
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
      g_.connect(k["z"], pop.zNewWhole.slice(z0, z1, 1).flatten());
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
        if (p.bytes() > 0) {
          stepStore(store, pop.newBits.slice(p.kb0, p.kb1, 1), p.tapeBits, p.tile, s_.tapeSlots);
          if (pop.recurrent)
            stepStore(store, pop.stateBits.slice(p.kb0, p.kb1, 1), p.tapePrevBits, p.tile, s_.tapeSlots);
        }
      }
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
      g_.connect(v["gradA"], p.gv.flatten());  // LIF: not read
      g_.connect(v["bits"], pop.stepBits.slice(p.c0 / 8, (p.c1 + 7) / 8, 1).flatten());
      g_.connect(v["d"], p.dStep.flatten());
      g_.connect(v["beta"], p.beta);
      g_.connect(v["rho"], p.beta);  // LIF: not read
      g_.connect(v["gradCurrent"], p.gc.flatten());
      g_.connect(v["gradVPrev"], p.gvNew.flatten());
      g_.connect(v["gradAPrev"], p.scratch.flatten());
      g_.connect(v["ownBits"], p.ownBits);
      g_.setInitialValue(v["adaptStrength"], 0.0f);
      g_.setInitialValue(v["reset"], pop.spec.reset);
      g_.setInitialValue(v["adaptive"], 0);
      g_.setInitialValue(v["colBegin"], p.c0);
      g_.setInitialValue(v["colEnd"], p.c1);
      g_.setInitialValue(v["ownSlice"], p.ownBits.numElements() / 6);
    }
    seq.add(program::Execute(neuron));
    for (Part &p : pop.parts) seq.add(program::Copy(p.gvNew, p.gv));
    // weight and bias gradients of the step, accumulated on the tiles
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
    }
    seq.add(program::Execute(gw));
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
              if (bits)
                seq.add(store ? program::Copy(own, p.remoteBits, slot) : program::Copy(p.remoteBits, own, slot));
            } else {
              seq.add(store ? program::Copy(p.v.flatten(), p.ckptV[a.slot]) : program::Copy(p.ckptV[a.slot], p.v.flatten()));
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
  allocate();
  std::size_t firstReverse = s_.actions.size();
  for (std::size_t i = 0; i < s_.actions.size(); ++i)
    if (s_.actions[i].kind == ActionKind::Reverse) {
      firstReverse = i;
      break;
    }
  std::vector<std::pair<Tensor, unsigned>> state, grads;
  for (Pop &pop : pops_)
    for (Part &p : pop.parts) {
      state.emplace_back(p.v, p.tile);
      for (const Tensor *t : {&p.gv, &p.gwIn, &p.gBias}) grads.emplace_back(*t, p.tile);
      if (pop.readout) {
        grads.emplace_back(p.gBeta, p.tile);
        continue;
      }
      state.emplace_back(p.spikeCount, p.tile);
      if (pop.recurrent) {
        for (const Tensor *t : {&p.gwRec, &p.gc}) grads.emplace_back(*t, p.tile);  // gc: step T's, 0
        if (p.bytes() > 0) state.emplace_back(pop.stateBits.slice(p.kb0, p.kb1, 1), p.tile);
      }
    }
  for (std::size_t j = 0; j < outPieces_.size(); ++j) state.emplace_back(outPieces_[j][s_.steps], outTiles_[j]);
  step_ = forwardStep(false);
  taped_ = forwardStep(true);
  back_ = backwardStep();
  net_.forward = program::Sequence({}, {"networkForward"});
  zero(net_.forward, state, "zeroState");
  net_.forward.add(actions(0, firstReverse));
  net_.backward = program::Sequence({}, {"networkBackward"});
  zero(net_.backward, grads, "zeroGradients");
  net_.backward.add(actions(firstReverse, s_.actions.size()));
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
  for (const LayerSpec &l : spec.layers) {
    const std::size_t n = l.size, nb = (n + 7) / 8;
    shapes.push_back({false, {B, n}});
    if (l.recurrent) shapes.push_back({true, {B, nb}});
    shapes.push_back({false, {S, B, n}});
    shapes.push_back({true, {S, B, nb}});
    if (l.recurrent) shapes.push_back({true, {S, B, nb}});
    if (K > 0) {
      shapes.push_back({false, {K, B * n}});
      if (l.recurrent) shapes.push_back({true, {K, B * nb}});
    }
  }
  const std::size_t n = spec.readout;
  shapes.push_back({false, {B, n}});
  if (K > 0) shapes.push_back({false, {K, B * n}});
  shapes.push_back({false, {T + 1, B * n}});
  return shapes;
}

NetworkGraph buildNetwork(poplar::Graph &graph, const NetworkSpec &spec, const RemoteBufferMaker &remoteBuffer) {
  return Builder(graph, spec, remoteBuffer).build();
}

}  // namespace network
}  // namespace ipu_snn
