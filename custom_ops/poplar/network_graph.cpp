// The network op's graph (see network_graph.hpp). Poplar calls only; every
// vertex is a codelet of spike_codelets.cpp, neuron_codelets.cpp or
// network_codelets.cpp.
#include "network_graph.hpp"

#include <map>
#include <numeric>
#include <stdexcept>

#include "tile_split.hpp"
#include "work_split.h"

namespace ipu_snn {
namespace network {
namespace {

using poplar::Tensor;
namespace program = poplar::program;

// One tile's share of a layer: its columns and everything it keeps for them.
struct Part {
  unsigned tile;
  std::size_t c0, c1;
  std::size_t width() const { return c1 - c0; }
  Tensor wIn, bias, beta, wRec;                // parameters
  Tensor gwIn, gBias, gwRec, gwInTmp, gwRecTmp;  // gradients
  Tensor v, z, vNew, zNew, d, current, currentRec, scratch, spikeCount;  // state and one step
  Tensor tapeZ, tapeD, tapeZPrev;              // [S, B, w]
  Tensor ckptV, ckptZ;                         // [localSlots, B, w]
  poplar::RemoteBuffer remoteV, remoteZ;       // offchip slots
  Tensor out, gradOut;                         // [T, B, w] (last layer)
  Tensor zStep, dStep, zPrevStep;              // one taped step, loaded
  Tensor gz, gv, gvNew, gc, carried, fromAbove, bits, ownBits;
  Tensor partialIn, partialRec;                // [B, n_in], [B, n]
};

struct Lists {
  Tensor ids;     // int [B, capacity]
  Tensor counts;  // int [B]
};

class Builder {
public:
  Builder(poplar::Graph &g, const NetworkSpec &s, const RemoteBufferMaker &remote)
      : g_(g), s_(s), remote_(remote) {}
  NetworkGraph build();

private:
  poplar::Graph &g_;
  const NetworkSpec &s_;
  const RemoteBufferMaker &remote_;
  std::vector<std::vector<Part>> parts_;
  std::vector<unsigned> firstTile_;
  Tensor counter_;
  Tensor inStep_;  // uint8 [B, nb], sample b on layer 0's tile b mod parts
  std::map<unsigned, Tensor> constants_;
  NetworkGraph net_;

  std::size_t nIn(std::size_t l) const { return l == 0 ? s_.inputs : s_.layers[l - 1].size; }
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
  void allocate();
  Lists bitsLists(program::Sequence &seq, const std::string &name);
  Lists spikeLists(program::Sequence &seq, const std::vector<Part> &source, Tensor Part::*z, std::size_t consumer,
                   const std::string &name);
  Lists fullLists(std::size_t n, std::size_t consumer, const std::string &name);
  void product(poplar::ComputeSet cs, const Lists &lists, std::size_t capacity, Tensor Part::*weight,
               Tensor Part::*out, Part &p);
  program::Sequence forwardStep(bool tape);
  program::Sequence backwardStep();
  void zero(program::Sequence &seq, const std::vector<std::pair<Tensor, unsigned>> &ts, const std::string &name);
  program::Sequence step_, taped_, back_;
  program::Sequence actions(std::size_t begin, std::size_t end);
  void stepCount(program::Sequence &seq, int delta);
};

void Builder::allocate() {
  const unsigned numTiles = g_.getTarget().getNumTiles();
  const std::vector<unsigned> tiles = layerTiles(s_, numTiles);
  const std::size_t B = s_.batch, T = s_.steps, S = s_.tapeSlots;
  unsigned next = 0;
  for (std::size_t l = 0; l < s_.layers.size(); ++l) {
    const LayerSpec &layer = s_.layers[l];
    const auto ranges = tiling::splitEven(layer.size, tiles[l]);
    std::vector<Part> ps;
    const std::string ln = "layer" + std::to_string(l);
    for (std::size_t j = 0; j < ranges.size(); ++j) {
      Part p;
      p.tile = next + unsigned(j);
      p.c0 = ranges[j].begin;
      p.c1 = ranges[j].end;
      const std::size_t w = p.width();
      const unsigned t = p.tile;
      const std::string pn = ln + ".tile" + std::to_string(t) + ".";
      p.wIn = var(poplar::FLOAT, {nIn(l), w}, t, pn + "weightIn");
      p.bias = var(poplar::FLOAT, {w}, t, pn + "bias");
      p.beta = var(poplar::FLOAT, {w}, t, pn + "beta");
      p.gwIn = var(poplar::FLOAT, {nIn(l), w}, t, pn + "gradWeightIn");
      p.gwInTmp = var(poplar::FLOAT, {nIn(l), w}, t, pn + "gradWeightInStep");
      p.gBias = var(poplar::FLOAT, {w}, t, pn + "gradBias");
      if (layer.recurrent) {
        p.wRec = var(poplar::FLOAT, {layer.size, w}, t, pn + "weightRec");
        p.gwRec = var(poplar::FLOAT, {layer.size, w}, t, pn + "gradWeightRec");
        p.gwRecTmp = var(poplar::FLOAT, {layer.size, w}, t, pn + "gradWeightRecStep");
        p.tapeZPrev = var(poplar::FLOAT, {S, B, w}, t, pn + "tapeZPrev");
        p.zPrevStep = var(poplar::FLOAT, {B, w}, t, pn + "zPrevStep");
        p.currentRec = var(poplar::FLOAT, {B, w}, t, pn + "currentRecurrent");
        p.carried = var(poplar::FLOAT, {B, w}, t, pn + "gradZCarried");
        p.partialRec = var(poplar::FLOAT, {B, std::size_t(layer.size)}, t, pn + "partialRec");
      }
      for (auto [member, name] : {std::pair{&Part::v, "v"}, {&Part::z, "z"}, {&Part::vNew, "vNew"},
                                  {&Part::zNew, "zNew"}, {&Part::d, "d"}, {&Part::current, "current"},
                                  {&Part::scratch, "scratch"}, {&Part::zStep, "zStep"}, {&Part::dStep, "dStep"},
                                  {&Part::gz, "gradZ"}, {&Part::gv, "gradV"}, {&Part::gvNew, "gradVNew"},
                                  {&Part::gc, "gradCurrent"}, {&Part::spikeCount, "spikeCount"}})
        p.*member = var(poplar::FLOAT, {B, w}, t, pn + name);
      if (l + 1 < s_.layers.size()) p.fromAbove = var(poplar::FLOAT, {B, w}, t, pn + "gradZFromAbove");
      if (l > 0) p.partialIn = var(poplar::FLOAT, {B, nIn(l)}, t, pn + "partialIn");
      p.tapeZ = var(poplar::FLOAT, {S, B, w}, t, pn + "tapeZ");
      p.tapeD = var(poplar::FLOAT, {S, B, w}, t, pn + "tapeD");
      if (s_.localSlots > 0) {
        p.ckptV = var(poplar::FLOAT, {s_.localSlots, B, w}, t, pn + "checkpointV");
        p.ckptZ = var(poplar::FLOAT, {s_.localSlots, B, w}, t, pn + "checkpointZ");
      }
      if (s_.offchipSlots > 0) {
        auto remote = [&](const std::string &name, const Tensor &row) {
          return remote_ ? remote_(name, row, s_.offchipSlots)
                         : g_.addRemoteBuffer(name, row.elementType(), row.numElements(), s_.offchipSlots);
        };
        p.remoteV = remote(pn + "remoteV", p.v.flatten());
        p.remoteZ = remote(pn + "remoteZ", p.z.flatten());
      }
      p.bits = var(poplar::UNSIGNED_CHAR, {B, (w + 7) / 8}, t, pn + "bits");
      const unsigned rowsPerWorker = core::worker_span_bound<unsigned>(unsigned(B), 6u, 1u);
      p.ownBits = var(poplar::UNSIGNED_CHAR,
                      {6 * std::size_t(core::packed_slice_bytes<unsigned>(rowsPerWorker, unsigned(w)))}, t,
                      pn + "ownBits");
      if (l + 1 == s_.layers.size()) {
        p.out = var(poplar::FLOAT, {T, B, w}, t, pn + "output");
        p.gradOut = var(poplar::FLOAT, {T, B, w}, t, pn + "gradOutput");
      }
      ps.push_back(p);
    }
    firstTile_.push_back(next);
    next += tiles[l];
    parts_.push_back(std::move(ps));
    LayerTensors lt;
    lt.weightIn = whole(parts_[l], &Part::wIn, 1);
    lt.bias = whole(parts_[l], &Part::bias, 0);
    lt.beta = whole(parts_[l], &Part::beta, 0);
    lt.gradWeightIn = whole(parts_[l], &Part::gwIn, 1);
    lt.gradBias = whole(parts_[l], &Part::gBias, 0);
    if (layer.recurrent) {
      lt.weightRec = whole(parts_[l], &Part::wRec, 1);
      lt.gradWeightRec = whole(parts_[l], &Part::gwRec, 1);
    }
    lt.spikeCount = whole(parts_[l], &Part::spikeCount, 1);
    lt.state = whole(parts_[l], &Part::z, 1);
    for (const Part &p : parts_[l]) lt.tiles.push_back(p.tile);
    net_.layers.push_back(lt);
    net_.carried.push_back(whole(parts_[l], &Part::v, 1));
    net_.carried.push_back(lt.state);
    net_.carried.push_back(whole(parts_[l], &Part::tapeZ, 2));
    net_.carried.push_back(whole(parts_[l], &Part::tapeD, 2));
    if (layer.recurrent) net_.carried.push_back(whole(parts_[l], &Part::tapeZPrev, 2));
    if (s_.localSlots > 0) {
      net_.carried.push_back(whole(parts_[l], &Part::ckptV, 2));
      net_.carried.push_back(whole(parts_[l], &Part::ckptZ, 2));
    }
  }
  const std::size_t nb = (s_.inputs + 7) / 8;
  const std::size_t p0 = parts_[0].size();
  net_.inputBits = g_.addVariable(poplar::UNSIGNED_CHAR, {B, T, nb}, {"inputBits"});
  inStep_ = g_.addVariable(poplar::UNSIGNED_CHAR, {B, nb}, {"inputStep"});
  for (std::size_t b = 0; b < B; ++b) {
    g_.setTileMapping(net_.inputBits[b], parts_[0][b % p0].tile);
    g_.setTileMapping(inStep_[b], parts_[0][b % p0].tile);
  }
  const auto shapes = carriedShapes(s_);
  if (shapes.size() != net_.carried.size())
    throw std::logic_error("network graph: carriedShapes disagrees with the carried tensors");
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    std::size_t n = 1;
    for (std::size_t d : shapes[i]) n *= d;
    if (n != net_.carried[i].numElements())
      throw std::logic_error("network graph: carriedShapes disagrees with carried tensor " + std::to_string(i));
  }
  net_.output = whole(parts_.back(), &Part::out, 2);
  net_.gradOutput = whole(parts_.back(), &Part::gradOut, 2);
  counter_ = var(poplar::UNSIGNED_INT, {1}, 0, "step");
}

void Builder::stepCount(program::Sequence &seq, int delta) {
  poplar::ComputeSet cs = g_.addComputeSet({delta > 0 ? "stepUp" : "stepDown"});
  poplar::VertexRef v = vertex(cs, "StepCount", 0);
  g_.connect(v["step"], counter_[0]);
  g_.setInitialValue(v["delta"], delta);
  seq.add(program::Execute(cs));
}

// Layer 0's input lists at the current step: each sample's bits out of
// inputBits (StepLoad), then listed (BitsToList), on the sample's tile.
Lists Builder::bitsLists(program::Sequence &seq, const std::string &name) {
  const std::size_t B = s_.batch, nb = (s_.inputs + 7) / 8, p0 = parts_[0].size();
  Lists lists{g_.addVariable(poplar::INT, {B, std::size_t(s_.inputs)}, {name + ".ids"}),
              g_.addVariable(poplar::INT, {B}, {name + ".counts"})};
  Tensor mask = g_.addVariable(poplar::UNSIGNED_CHAR, {B, std::size_t(s_.inputs)}, {name + ".mask"});
  poplar::ComputeSet load = g_.addComputeSet({name + ".load"});
  poplar::ComputeSet list = g_.addComputeSet({name + ".list"});
  for (std::size_t b = 0; b < B; ++b) {
    const unsigned tile = parts_[0][b % p0].tile;
    for (const Tensor &t : {lists.ids[b], lists.counts[b], mask[b]}) g_.setTileMapping(t, tile);
    poplar::VertexRef l = vertex(load, "StepLoad<unsigned char>", tile);
    g_.connect(l["src"], net_.inputBits[b].flatten());
    g_.connect(l["dst"], inStep_[b]);
    g_.connect(l["step"], counter_[0]);
    g_.setInitialValue(l["slots"], s_.steps);
    g_.setInitialValue(l["rows"], 1);
    g_.setInitialValue(l["rowStride"], 0);
    g_.setInitialValue(l["stepStride"], nb);
    poplar::VertexRef v = vertex(list, "BitsToList", tile);
    g_.connect(v["bits"], inStep_[b]);
    g_.connect(v["mask"], mask[b]);
    g_.connect(v["ids"], lists.ids[b]);
    g_.connect(v["count"], lists.counts[b]);
    g_.setInitialValue(v["numNeurons"], s_.inputs);
  }
  seq.add(program::Execute(load));
  seq.add(program::Execute(list));
  return lists;
}

// The spike lists of a spiking layer's z rows (0/1), one SpikeSelect per
// sample on the consumer's tile b mod its tiles; capacity is the whole layer.
Lists Builder::spikeLists(program::Sequence &seq, const std::vector<Part> &source, Tensor Part::*z,
                          std::size_t consumer, const std::string &name) {
  const std::size_t B = s_.batch;
  std::size_t n = 0;
  for (const Part &p : source) n += p.width();
  const Tensor rows = whole(source, z, 1);  // [B, n]
  Lists lists{g_.addVariable(poplar::INT, {B, n}, {name + ".ids"}), Tensor()};
  Tensor found = g_.addVariable(poplar::INT, {B, 4}, {name + ".found"});
  Tensor masks = g_.addVariable(poplar::UNSIGNED_CHAR, {2, B, n}, {name + ".masks"});
  poplar::ComputeSet cs = g_.addComputeSet({name});
  const auto &cp = parts_[consumer];
  for (std::size_t b = 0; b < B; ++b) {
    const unsigned tile = cp[b % cp.size()].tile;
    for (const Tensor &t : {lists.ids[b], found[b], masks[0][b], masks[1][b]}) g_.setTileMapping(t, tile);
    poplar::VertexRef v = vertex(cs, "SpikeSelect<float>", tile);
    g_.connect(v["membrane"], rows[b]);
    g_.connect(v["spikeMask"], masks[0][b]);
    g_.connect(v["nearMask"], masks[1][b]);
    g_.connect(v["ids"], lists.ids[b]);
    g_.connect(v["counts"], found[b]);
    g_.setInitialValue(v["threshold"], 0.5f);
    g_.setInitialValue(v["nearThreshold"], 0.5f);
    g_.setInitialValue(v["useNear"], 0);
  }
  seq.add(program::Execute(cs));
  lists.counts = found.slice(0, 1, 1).reshape({B});
  return lists;
}

// Every neuron listed for every sample: the input gradient at all of them
// (dense, exact) through SpikeMatmulGradInput.
Lists Builder::fullLists(std::size_t n, std::size_t consumer, const std::string &name) {
  const std::size_t B = s_.batch;
  // one [n] list of every neuron, viewed once per sample (no copy in the graph)
  Tensor iota = g_.addVariable(poplar::INT, {n}, {name + ".ids"});
  std::vector<int> values(n);
  for (std::size_t i = 0; i < n; ++i) values[i] = int(i);
  g_.setInitialValue<int>(iota, values);
  Tensor counts = g_.addConstant<int>(poplar::INT, {B}, int(n), {name + ".counts"});
  const auto &cp = parts_[consumer];
  g_.setTileMapping(iota, cp[0].tile);
  g_.setTileMapping(counts, cp[0].tile);
  return Lists{poplar::concat(std::vector<Tensor>(B, iota)).reshape({B, n}), counts};
}

void Builder::product(poplar::ComputeSet cs, const Lists &lists, std::size_t capacity, Tensor Part::*weight,
                      Tensor Part::*out, Part &p) {
  poplar::VertexRef v = vertex(cs, "SpikeMatmulForward<float>", p.tile);
  g_.connect(v["ids"], lists.ids.flatten());
  g_.connect(v["counts"], lists.counts);
  g_.connect(v["weight"], (p.*weight).flatten());
  g_.connect(v["out"], (p.*out).flatten());
  g_.setInitialValue(v["capacity"], capacity);
  g_.setInitialValue(v["colBegin"], 0);
  g_.setInitialValue(v["colEnd"], p.width());
}

program::Sequence Builder::forwardStep(bool tape) {
  program::Sequence seq({}, {tape ? "forwardStepTaped" : "forwardStep"});
  for (std::size_t l = 0; l < s_.layers.size(); ++l) {
    const LayerSpec &layer = s_.layers[l];
    const std::string ln = "layer" + std::to_string(l);
    const Lists in = l == 0 ? bitsLists(seq, ln + ".inputList")
                            : spikeLists(seq, parts_[l - 1], &Part::zNew, l, ln + ".inputList");
    Lists rec;
    if (layer.recurrent) rec = spikeLists(seq, parts_[l], &Part::z, l, ln + ".recurrentList");
    poplar::ComputeSet products = g_.addComputeSet({ln + ".products"});
    poplar::ComputeSet bias = g_.addComputeSet({ln + ".bias"});
    poplar::ComputeSet recurrent = g_.addComputeSet({ln + ".addRecurrent"});
    poplar::ComputeSet neuron = g_.addComputeSet({ln + ".neuron"});
    for (Part &p : parts_[l]) {
      // the products overwrite their outputs; the bias and the recurrent current are added after
      product(products, in, nIn(l), &Part::wIn, &Part::current, p);
      if (layer.recurrent) {
        product(products, rec, layer.size, &Part::wRec, &Part::currentRec, p);
        poplar::VertexRef a = vertex(recurrent, "AccumulateRows<float>", p.tile);
        g_.connect(a["x"], p.currentRec.flatten());
        g_.connect(a["acc"], p.current.flatten());
        g_.setInitialValue(a["rows"], 1);
      }
      poplar::VertexRef b = vertex(bias, "BiasRows<float>", p.tile);
      g_.connect(b["bias"], p.bias);
      g_.connect(b["out"], p.current.flatten());
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
      g_.setInitialValue(v["threshold"], layer.threshold);
      g_.setInitialValue(v["adaptStrength"], 0.0f);
      g_.setInitialValue(v["scale"], layer.scale);
      g_.setInitialValue(v["reset"], layer.reset);
      g_.setInitialValue(v["surrogate"], layer.surrogate);
      g_.setInitialValue(v["adaptive"], 0);
      g_.setInitialValue(v["colBegin"], 0);
      g_.setInitialValue(v["colEnd"], p.width());
    }
    seq.add(program::Execute(products));
    seq.add(program::Execute(bias));
    if (layer.recurrent) seq.add(program::Execute(recurrent));
    seq.add(program::Execute(neuron));
  }
  // The step's tape and output, then the new state.
  poplar::ComputeSet store = g_.addComputeSet({"storeStep"});
  auto stepStore = [&](const Tensor &src, const Tensor &dst, unsigned tile, std::size_t slots) {
    poplar::VertexRef v = vertex(store, "StepStore<float>", tile);
    g_.connect(v["src"], src.flatten());
    g_.connect(v["dst"], dst.flatten());
    g_.connect(v["step"], counter_[0]);
    g_.setInitialValue(v["slots"], slots);
  };
  for (std::size_t l = 0; l < s_.layers.size(); ++l)
    for (Part &p : parts_[l]) {
      if (tape) {
        stepStore(p.zNew, p.tapeZ, p.tile, s_.tapeSlots);
        stepStore(p.d, p.tapeD, p.tile, s_.tapeSlots);
        if (s_.layers[l].recurrent) stepStore(p.z, p.tapeZPrev, p.tile, s_.tapeSlots);
      }
      if (l + 1 == s_.layers.size()) stepStore(p.zNew, p.out, p.tile, s_.steps);
      poplar::VertexRef a = vertex(store, "AccumulateRows<float>", p.tile);
      g_.connect(a["x"], p.zNew.flatten());
      g_.connect(a["acc"], p.spikeCount.flatten());
      g_.setInitialValue(a["rows"], 1);
    }
  seq.add(program::Execute(store));
  for (auto &ps : parts_)
    for (Part &p : ps) {
      seq.add(program::Copy(p.vNew, p.v));
      seq.add(program::Copy(p.zNew, p.z));
    }
  stepCount(seq, +1);
  return seq;
}

program::Sequence Builder::backwardStep() {
  program::Sequence seq({}, {"backwardStep"});
  const std::size_t B = s_.batch, L = s_.layers.size();
  // The step's tape (and the output gradient) out of their slots.
  poplar::ComputeSet load = g_.addComputeSet({"loadStep"});
  auto stepLoad = [&](const Tensor &src, const Tensor &dst, unsigned tile, std::size_t slots) {
    poplar::VertexRef v = vertex(load, "StepLoad<float>", tile);
    g_.connect(v["src"], src.flatten());
    g_.connect(v["dst"], dst.flatten());
    g_.connect(v["step"], counter_[0]);
    g_.setInitialValue(v["slots"], slots);
    g_.setInitialValue(v["rows"], 1);
    g_.setInitialValue(v["rowStride"], 0);
    g_.setInitialValue(v["stepStride"], dst.numElements());
  };
  for (std::size_t l = 0; l < L; ++l)
    for (Part &p : parts_[l]) {
      stepLoad(p.tapeZ, p.zStep, p.tile, s_.tapeSlots);
      stepLoad(p.tapeD, p.dStep, p.tile, s_.tapeSlots);
      if (s_.layers[l].recurrent) stepLoad(p.tapeZPrev, p.zPrevStep, p.tile, s_.tapeSlots);
      if (l + 1 == L) stepLoad(p.gradOut, p.gz, p.tile, s_.steps);
    }
  seq.add(program::Execute(load));
  for (std::size_t l = L; l-- > 0;) {
    const LayerSpec &layer = s_.layers[l];
    const std::string ln = "layer" + std::to_string(l);
    auto &ps = parts_[l];
    // gradient w.r.t. z(n): the output's (last layer), the next layer's
    // input gradient, and the recurrent one from step n + 1
    if (l + 1 < L)
      for (Part &p : ps) seq.add(program::Copy(p.fromAbove, p.gz));
    if (layer.recurrent) {
      poplar::ComputeSet cs = g_.addComputeSet({ln + ".gradZ"});
      for (Part &p : ps) {
        poplar::VertexRef v = vertex(cs, "AccumulateRows<float>", p.tile);
        g_.connect(v["x"], p.carried.flatten());
        g_.connect(v["acc"], p.gz.flatten());
        g_.setInitialValue(v["rows"], 1);
      }
      seq.add(program::Execute(cs));
    }
    poplar::ComputeSet pack = g_.addComputeSet({ln + ".pack"});
    poplar::ComputeSet neuron = g_.addComputeSet({ln + ".neuronBackward"});
    for (Part &p : ps) {
      poplar::VertexRef k = vertex(pack, "PackSpikes<float>", p.tile);
      g_.connect(k["z"], p.zStep.flatten());
      g_.connect(k["bits"], p.bits.flatten());
      g_.setInitialValue(k["numNeurons"], p.width());
      poplar::VertexRef v = vertex(neuron, "NeuronBackward<float>", p.tile);
      g_.connect(v["gradZ"], p.gz.flatten());
      g_.connect(v["gradV"], p.gv.flatten());
      g_.connect(v["gradA"], p.gv.flatten());  // LIF: not read
      g_.connect(v["bits"], p.bits.flatten());
      g_.connect(v["d"], p.dStep.flatten());
      g_.connect(v["beta"], p.beta);
      g_.connect(v["rho"], p.beta);  // LIF: not read
      g_.connect(v["gradCurrent"], p.gc.flatten());
      g_.connect(v["gradVPrev"], p.gvNew.flatten());
      g_.connect(v["gradAPrev"], p.scratch.flatten());
      g_.connect(v["ownBits"], p.ownBits);
      g_.setInitialValue(v["adaptStrength"], 0.0f);
      g_.setInitialValue(v["reset"], layer.reset);
      g_.setInitialValue(v["adaptive"], 0);
      g_.setInitialValue(v["colBegin"], 0);
      g_.setInitialValue(v["colEnd"], p.width());
      g_.setInitialValue(v["ownSlice"], p.ownBits.numElements() / 6);
    }
    seq.add(program::Execute(pack));
    seq.add(program::Execute(neuron));
    for (Part &p : ps) seq.add(program::Copy(p.gvNew, p.gv));
    // weight and bias gradients of the step, accumulated on the tiles
    const Lists in = l == 0 ? bitsLists(seq, ln + ".inputListBack")
                            : spikeLists(seq, parts_[l - 1], &Part::zStep, l, ln + ".inputListBack");
    Lists rec;
    if (layer.recurrent) rec = spikeLists(seq, ps, &Part::zPrevStep, l, ln + ".recurrentListBack");
    poplar::ComputeSet gw = g_.addComputeSet({ln + ".gradWeight"});
    poplar::ComputeSet acc = g_.addComputeSet({ln + ".accumulate"});
    auto gradWeight = [&](const Lists &lists, std::size_t capacity, Part &p, const Tensor &tmp, const Tensor &sum) {
      poplar::VertexRef v = vertex(gw, "SpikeMatmulGradWeight<float>", p.tile);
      g_.connect(v["ids"], lists.ids.flatten());
      g_.connect(v["counts"], lists.counts);
      g_.connect(v["gradOut"], p.gc.flatten());
      g_.connect(v["gradWeight"], tmp.flatten());
      g_.setInitialValue(v["capacity"], capacity);
      g_.setInitialValue(v["colBegin"], 0);
      g_.setInitialValue(v["colEnd"], p.width());
      poplar::VertexRef a = vertex(acc, "AccumulateRows<float>", p.tile);
      g_.connect(a["x"], tmp.flatten());
      g_.connect(a["acc"], sum.flatten());
      g_.setInitialValue(a["rows"], 1);
    };
    for (Part &p : ps) {
      gradWeight(in, nIn(l), p, p.gwInTmp, p.gwIn);
      if (layer.recurrent) gradWeight(rec, layer.size, p, p.gwRecTmp, p.gwRec);
      poplar::VertexRef a = vertex(acc, "AccumulateRows<float>", p.tile);
      g_.connect(a["x"], p.gc.flatten());
      g_.connect(a["acc"], p.gBias);
      g_.setInitialValue(a["rows"], B);
    }
    seq.add(program::Execute(gw));
    seq.add(program::Execute(acc));
    // input gradients: to the layer below (step n) and to z(n - 1) (recurrent)
    auto gradInput = [&](std::size_t n, Tensor Part::*weight, Tensor Part::*partial, std::vector<Part> &dest,
                         Tensor Part::*into, const std::string &name) {
      const Lists all = fullLists(n, l, ln + "." + name + ".all");
      poplar::ComputeSet gi = g_.addComputeSet({ln + "." + name});
      for (Part &p : ps) {
        poplar::VertexRef v = vertex(gi, "SpikeMatmulGradInput<float>", p.tile);
        g_.connect(v["ids"], all.ids.flatten());
        g_.connect(v["counts"], all.counts);
        g_.connect(v["weight"], (p.*weight).flatten());
        g_.connect(v["gradOut"], p.gc.flatten());
        g_.connect(v["partial"], (p.*partial).flatten());
        g_.setInitialValue(v["capacity"], n);
        g_.setInitialValue(v["colBegin"], 0);
        g_.setInitialValue(v["colEnd"], p.width());
      }
      poplar::ComputeSet sum = g_.addComputeSet({ln + "." + name + ".sum"});
      for (Part &q : dest) {
        std::vector<Tensor> pieces;
        for (Part &p : ps) pieces.push_back((p.*partial).slice(q.c0, q.c1, 1).flatten());
        poplar::VertexRef v = vertex(sum, "SumParts<float>", q.tile);
        g_.connect(v["parts"], poplar::concat(pieces));
        g_.connect(v["out"], (q.*into).flatten());
        g_.setInitialValue(v["numParts"], ps.size());
      }
      seq.add(program::Execute(gi));
      seq.add(program::Execute(sum));
    };
    if (l > 0) gradInput(nIn(l), &Part::wIn, &Part::partialIn, parts_[l - 1], &Part::fromAbove, "gradInput");
    if (layer.recurrent) gradInput(layer.size, &Part::wRec, &Part::partialRec, ps, &Part::carried, "gradRecurrent");
  }
  stepCount(seq, -1);
  return seq;
}

void Builder::zero(program::Sequence &seq, const std::vector<std::pair<Tensor, unsigned>> &ts,
                   const std::string &name) {
  poplar::ComputeSet cs = g_.addComputeSet({name});
  for (const auto &[t, tile] : ts) {
    poplar::VertexRef v = vertex(cs, "ZeroFill<float>", tile);
    g_.connect(v["out"], t.flatten());
  }
  seq.add(program::Execute(cs));
}

program::Sequence Builder::actions(std::size_t begin, std::size_t end) {
  program::Sequence seq;
  const program::Sequence &step = step_, &taped = taped_, &back = back_;
  for (std::size_t i = begin; i < end; ++i) {
    const Action &a = s_.actions[i];
    switch (a.kind) {
      case ActionKind::Advance:
        seq.add(program::Copy(constantStep(a.n0), counter_));
        seq.add(program::Repeat(a.n1 - a.n0, a.tape ? taped : step));
        break;
      case ActionKind::Reverse: {
        std::size_t j = i;
        while (j + 1 < end && s_.actions[j + 1].kind == ActionKind::Reverse && s_.actions[j + 1].n0 + 1 == s_.actions[j].n0)
          ++j;
        seq.add(program::Copy(constantStep(a.n0), counter_));
        seq.add(program::Repeat(unsigned(j - i + 1), back));
        i = j;
        break;
      }
      case ActionKind::Store: case ActionKind::Load:
        for (auto &ps : parts_)
          for (Part &p : ps) {
            const bool store = a.kind == ActionKind::Store;
            if (a.offchip) {
              if (store) {
                seq.add(program::Copy(p.v.flatten(), p.remoteV, constantStep(a.slot)));
                seq.add(program::Copy(p.z.flatten(), p.remoteZ, constantStep(a.slot)));
              } else {
                seq.add(program::Copy(p.remoteV, p.v.flatten(), constantStep(a.slot)));
                seq.add(program::Copy(p.remoteZ, p.z.flatten(), constantStep(a.slot)));
              }
            } else if (store) {
              seq.add(program::Copy(p.v, p.ckptV[a.slot]));
              seq.add(program::Copy(p.z, p.ckptZ[a.slot]));
            } else {
              seq.add(program::Copy(p.ckptV[a.slot], p.v));
              seq.add(program::Copy(p.ckptZ[a.slot], p.z));
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
  allocate();
  std::size_t firstReverse = s_.actions.size();
  for (std::size_t i = 0; i < s_.actions.size(); ++i)
    if (s_.actions[i].kind == ActionKind::Reverse) {
      firstReverse = i;
      break;
    }
  std::vector<std::pair<Tensor, unsigned>> state, grads;
  for (std::size_t l = 0; l < parts_.size(); ++l)
    for (Part &p : parts_[l]) {
      for (const Tensor *t : {&p.v, &p.z, &p.spikeCount}) state.emplace_back(*t, p.tile);
      for (const Tensor *t : {&p.gv, &p.gwIn, &p.gBias}) grads.emplace_back(*t, p.tile);
      if (s_.layers[l].recurrent)
        for (const Tensor *t : {&p.gwRec, &p.carried}) grads.emplace_back(*t, p.tile);
    }
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
  std::size_t total = 0;
  for (const LayerSpec &l : spec.layers) total += l.size;
  std::vector<unsigned> tiles;
  for (const LayerSpec &l : spec.layers) {
    const std::size_t share = total <= numTiles ? l.size : std::max<std::size_t>(1, l.size * numTiles / total);
    tiles.push_back(unsigned(std::min<std::size_t>(l.size, share)));
  }
  return tiles;
}

std::vector<std::vector<std::size_t>> carriedShapes(const NetworkSpec &spec) {
  const std::size_t B = spec.batch, S = spec.tapeSlots, K = spec.localSlots;
  std::vector<std::vector<std::size_t>> shapes;
  for (const LayerSpec &l : spec.layers) {
    const std::size_t n = l.size;
    shapes.insert(shapes.end(), {{B, n}, {B, n}, {S, B, n}, {S, B, n}});
    if (l.recurrent) shapes.push_back({S, B, n});
    if (K > 0) shapes.insert(shapes.end(), {{K, B, n}, {K, B, n}});
  }
  return shapes;
}

NetworkGraph buildNetwork(poplar::Graph &graph, const NetworkSpec &spec, const RemoteBufferMaker &remoteBuffer) {
  return Builder(graph, spec, remoteBuffer).build();
}

}  // namespace network
}  // namespace ipu_snn
