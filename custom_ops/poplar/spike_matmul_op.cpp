// PopART custom ops of the sparse spike matmul (Poplar SDK 3.x).
//
// Built into libspike_matmul_op.so by `make -C custom_ops ipu`; PopTorch reaches
// it after ctypes.cdll.LoadLibrary(...) through
//   poptorch.custom_op([ids, counts, weight], "SpikeMatmul", "ipu_snn", 1,
//                      example_outputs=[out], attributes={...})
//   poptorch.custom_op([ids, listed_counts, weight, grad_out],
//                      "SpikeMatmulGradInput", "ipu_snn", 1, ...)
//   poptorch.custom_op([membrane], "SpikeSelect", "ipu_snn", 1, ...)
//
// Ops (inputs -> outputs):
//   SpikeMatmul:          ids int32 [B, K], counts int32 [B], weight [N_in, N_out]
//                         -> out [B, N_out] (weight's type)
//   SpikeMatmulGradWeight (autograd of SpikeMatmul w.r.t. weight):
//                         grad_out [B, N_out], ids, counts -> grad_weight [N_in, N_out]
//   SpikeMatmulGradInput: ids, listed counts, weight, grad_out -> values [B, K]
//                         (values at listed positions, 0 elsewhere: the sparse
//                         input gradient; ids are integer, so PopART autograd
//                         cannot produce it and the caller invokes it directly)
//   SpikeSelect:          membrane [B, N] -> ids int32 [B, K], counts int32 [B, 4]
//                         ({spikes, near, dropped, near_dropped} per sample)
//
// Attributes: capacity (K, SpikeSelect), threshold, near_threshold (SpikeSelect;
// near_threshold >= threshold turns the second threshold off), tile_begin,
// tile_end (the tile range the weight rows are spread over; tile_end <= 0 means
// the last tile of the graph). Rows are split evenly, ceil(N_in / tiles) per
// tile; tiles past the last row get no vertex.
//
// The codelets (spike_codelets.cpp) are loaded from the precompiled
// spike_codelets.gp next to this library, or from IPU_SNN_CODELETS when set.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <popart/op.hpp>
#include <popart/opmanager.hpp>
#include <popart/opserialiser.hpp>
#include <popart/popx/opx.hpp>
#include <popart/popx/opxmanager.hpp>

#include <poplar/Graph.hpp>
#include <popops/Cast.hpp>
#include <popops/Reduce.hpp>

// Where `make ipu` puts the compiled codelets; the Makefile passes the real path.
#ifndef IPU_SNN_CODELETS_PATH
#define IPU_SNN_CODELETS_PATH "spike_codelets.gp"
#endif

namespace {

const popart::OperatorIdentifier kSpikeMatmul = {"ipu_snn", "SpikeMatmul", 1, {3, 3}, 1};
const popart::OperatorIdentifier kSpikeMatmulGradWeight = {
    "ipu_snn", "SpikeMatmulGradWeight", 1, {3, 3}, 1};
const popart::OperatorIdentifier kSpikeMatmulGradInput = {
    "ipu_snn", "SpikeMatmulGradInput", 1, {4, 4}, 1};
const popart::OperatorIdentifier kSpikeSelect = {"ipu_snn", "SpikeSelect", 1, {1, 1}, 2};

// Attributes every op carries: the tile range the rows are spread over.
struct TileRange {
  int64_t begin = 0;
  int64_t end = 0;  // <= 0: up to the graph's last tile
};

TileRange readTileRange(const popart::OpCreatorInfo &info) {
  TileRange range;
  range.begin = info.attributes.getAttribute<popart::Attributes::Int>("tile_begin", 0);
  range.end = info.attributes.getAttribute<popart::Attributes::Int>("tile_end", 0);
  return range;
}

void appendTileRange(popart::OpSerialiserBase &os, const TileRange &range) {
  os.appendAttribute("tile_begin", range.begin);
  os.appendAttribute("tile_end", range.end);
}

// ------------------------------------------------------------------ IR ops --

// What every op here shares: the tile range it is mapped onto, which is part
// of its identity for outlining, and a high subgraph value (worth outlining).
class TiledOp : public popart::Op {
public:
  TiledOp(const popart::OperatorIdentifier &opid, TileRange tiles,
          const popart::Op::Settings &settings)
      : popart::Op(opid, settings), tiles_(tiles) {}

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    popart::Op::appendOutlineAttributes(os);
    appendTileRange(os, tiles_);
  }

  float getSubgraphValue() const override { return getHighSubgraphValue(); }

  const TileRange &tiles() const { return tiles_; }

private:
  TileRange tiles_;
};

class SpikeMatmulOp : public TiledOp {
public:
  SpikeMatmulOp(const popart::OperatorIdentifier &opid, TileRange tiles,
                const popart::Op::Settings &settings)
      : TiledOp(opid, tiles, settings) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeMatmulOp>(*this);
  }

  // out [B, N_out] in the weight's type.
  void setup() final {
    const popart::Shape &ids = inShape(0);
    const popart::Shape &weight = inShape(2);
    outInfo(0) = popart::TensorInfo(inInfo(2).dataType(), popart::Shape{ids[0], weight[1]});
  }

  std::vector<std::unique_ptr<popart::Op>> getGradOps() final;
};

// Gradient w.r.t. the weight (input 2). ids and counts have no gradient.
class SpikeMatmulGradWeightOp : public TiledOp {
public:
  explicit SpikeMatmulGradWeightOp(const SpikeMatmulOp &fwd)
      : TiledOp(kSpikeMatmulGradWeight, fwd.tiles(), fwd.settings),
        weightInfo_(fwd.inInfo(2)) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeMatmulGradWeightOp>(*this);
  }

  void setup() final { outInfo(0) = weightInfo_; }

  const std::vector<popart::GradInOutMapper> &gradInputInfo() const final {
    static const std::vector<popart::GradInOutMapper> info = {
        {0, 0, popart::GradOpInType::GradOut},
        {1, 0, popart::GradOpInType::In},
        {2, 1, popart::GradOpInType::In}};
    return info;
  }

  const std::map<int, int> &gradOutToNonGradIn() const final {
    static const std::map<int, int> info = {{0, 2}};
    return info;
  }

private:
  popart::TensorInfo weightInfo_;
};

std::vector<std::unique_ptr<popart::Op>> SpikeMatmulOp::getGradOps() {
  std::vector<std::unique_ptr<popart::Op>> ops;
  ops.emplace_back(std::make_unique<SpikeMatmulGradWeightOp>(*this));
  return ops;
}

class SpikeMatmulGradInputOp : public TiledOp {
public:
  SpikeMatmulGradInputOp(const popart::OperatorIdentifier &opid, TileRange tiles,
                         const popart::Op::Settings &settings)
      : TiledOp(opid, tiles, settings) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeMatmulGradInputOp>(*this);
  }

  // values [B, K] in the weight's type.
  void setup() final {
    outInfo(0) = popart::TensorInfo(inInfo(2).dataType(), inShape(0));
  }
};

class SpikeSelectOp : public TiledOp {
public:
  SpikeSelectOp(const popart::OperatorIdentifier &opid, int64_t capacity,
                float threshold, float nearThreshold, TileRange tiles,
                const popart::Op::Settings &settings)
      : TiledOp(opid, tiles, settings),
        capacity_(capacity),
        threshold_(threshold),
        nearThreshold_(nearThreshold) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeSelectOp>(*this);
  }

  // ids int32 [B, K], counts int32 [B, 4].
  void setup() final {
    const int64_t batch = inShape(0)[0];
    outInfo(0) = popart::TensorInfo(popart::DataType::INT32, popart::Shape{batch, capacity_});
    outInfo(1) = popart::TensorInfo(popart::DataType::INT32, popart::Shape{batch, 4});
  }

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    TiledOp::appendOutlineAttributes(os);
    os.appendAttribute("capacity", capacity_);
    os.appendAttribute("threshold", threshold_);
    os.appendAttribute("near_threshold", nearThreshold_);
  }

  float getSubgraphValue() const final { return getLowSubgraphValue(); }

  int64_t capacity() const { return capacity_; }
  float threshold() const { return threshold_; }
  float nearThreshold() const { return nearThreshold_; }

private:
  int64_t capacity_;
  float threshold_;
  float nearThreshold_;
};

// ------------------------------------------------------------ registration --

const popart::OpDefinition::DataTypes kFloatTypes = {popart::DataType::FLOAT16,
                                                     popart::DataType::FLOAT};
const popart::OpDefinition::DataTypes kIntTypes = {popart::DataType::INT32};

const popart::OpDefinition kSpikeMatmulDef(
    {popart::OpDefinition::Inputs({{"ids", kIntTypes}, {"counts", kIntTypes}, {"weight", kFloatTypes}}),
     popart::OpDefinition::Outputs({{"out", kFloatTypes}}),
     popart::OpDefinition::Attributes({{"tile_begin", {"*"}}, {"tile_end", {"*"}}})});

const popart::OpDefinition kSpikeMatmulGradInputDef(
    {popart::OpDefinition::Inputs({{"ids", kIntTypes},
                                   {"counts", kIntTypes},
                                   {"weight", kFloatTypes},
                                   {"grad_out", kFloatTypes}}),
     popart::OpDefinition::Outputs({{"values", kFloatTypes}}),
     popart::OpDefinition::Attributes({{"tile_begin", {"*"}}, {"tile_end", {"*"}}})});

const popart::OpDefinition kSpikeSelectDef(
    {popart::OpDefinition::Inputs({{"membrane", kFloatTypes}}),
     popart::OpDefinition::Outputs({{"ids", kIntTypes}, {"counts", kIntTypes}}),
     popart::OpDefinition::Attributes({{"capacity", {"*"}},
                                       {"threshold", {"*"}},
                                       {"near_threshold", {"*"}},
                                       {"tile_begin", {"*"}},
                                       {"tile_end", {"*"}}})});

popart::OpCreator<SpikeMatmulOp> spikeMatmulCreator(
    popart::OpDefinitions({{kSpikeMatmul, kSpikeMatmulDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      return std::make_unique<SpikeMatmulOp>(info.opid, readTileRange(info), info.settings);
    },
    true);

popart::OpCreator<SpikeMatmulGradInputOp> spikeMatmulGradInputCreator(
    popart::OpDefinitions({{kSpikeMatmulGradInput, kSpikeMatmulGradInputDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      return std::make_unique<SpikeMatmulGradInputOp>(info.opid, readTileRange(info),
                                                      info.settings);
    },
    true);

popart::OpCreator<SpikeSelectOp> spikeSelectCreator(
    popart::OpDefinitions({{kSpikeSelect, kSpikeSelectDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      const int64_t capacity =
          info.attributes.getAttribute<popart::Attributes::Int>("capacity", 0);
      const float threshold =
          info.attributes.getAttribute<popart::Attributes::Float>("threshold", 1.0f);
      const float nearThreshold =
          info.attributes.getAttribute<popart::Attributes::Float>("near_threshold", threshold);
      return std::make_unique<SpikeSelectOp>(info.opid, capacity, threshold, nearThreshold,
                                             readTileRange(info), info.settings);
    },
    true);

// ------------------------------------------------------------ Poplar lowering --

// Adds the codelets once per graph: PopART may grow several of these ops into
// the same graph, and adding a vertex type twice is an error.
void addSpikeCodelets(poplar::Graph &graph) {
  static std::map<const poplar::Graph *, bool> added;
  if (added[&graph]) return;
  const char *env = std::getenv("IPU_SNN_CODELETS");
  graph.addCodelets(env != nullptr ? env : IPU_SNN_CODELETS_PATH);
  added[&graph] = true;
}

// The vertex type name for an element type, e.g. "SpikeMatmulForward<half>".
std::string vertexName(const std::string &base, const poplar::Type &type) {
  return base + (type == poplar::HALF ? "<half>" : "<float>");
}

// Even split of `rows` over the op's tile range: tile t of the range owns rows
// [t * perTile, min((t + 1) * perTile, rows)).
struct RowSplit {
  unsigned firstTile;
  unsigned tiles;    // tiles that own at least one row
  unsigned perTile;
};

RowSplit splitRows(const poplar::Graph &graph, const TileRange &range, std::size_t rows) {
  const unsigned numTiles = graph.getTarget().getNumTiles();
  const unsigned begin = static_cast<unsigned>(std::max<int64_t>(range.begin, 0));
  const unsigned end = range.end <= 0 ? numTiles
                                      : std::min<unsigned>(static_cast<unsigned>(range.end), numTiles);
  if (begin >= end) {
    throw popart::error("ipu_snn: empty tile range [{}, {}) on a graph of {} tiles",
                        range.begin, range.end, numTiles);
  }
  const unsigned available = end - begin;
  RowSplit split;
  split.firstTile = begin;
  split.perTile = static_cast<unsigned>((rows + available - 1) / available);
  if (split.perTile == 0) split.perTile = 1;
  split.tiles = static_cast<unsigned>((rows + split.perTile - 1) / split.perTile);
  return split;
}

// Per-tile scratch of the neuron index: [tiles, width] int32, row t on tile t.
poplar::Tensor addScratch(poplar::Graph &graph, const RowSplit &split, std::size_t width,
                          const poplar::DebugContext &dc) {
  poplar::Tensor t = graph.addVariable(poplar::INT, {split.tiles, width}, dc);
  for (unsigned t_i = 0; t_i < split.tiles; ++t_i) {
    graph.setTileMapping(t[t_i], split.firstTile + t_i);
  }
  return t;
}

class SpikeMatmulOpx : public popart::popx::Opx {
public:
  SpikeMatmulOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<SpikeMatmulOp>(op, {kSpikeMatmul});
  }

  void grow(poplar::program::Sequence &prog) const final {
    const SpikeMatmulOp &op = getOp<SpikeMatmulOp>();
    poplar::Graph &g = graph();
    addSpikeCodelets(g);
    const poplar::Tensor ids = getInTensor(0).flatten();
    const poplar::Tensor counts = getInTensor(1);
    const poplar::Tensor weight = getInTensor(2);
    const std::size_t batch = counts.dim(0), capacity = getInTensor(0).dim(1);
    const std::size_t nIn = weight.dim(0), nOut = weight.dim(1);
    const RowSplit split = splitRows(g, op.tiles(), nIn);

    poplar::Tensor partials = g.addVariable(poplar::FLOAT, {split.tiles, batch, nOut},
                                            debugContext("partials"));
    poplar::Tensor offsets = addScratch(g, split, nIn + 1, debugContext("offsets"));
    poplar::Tensor samples = addScratch(g, split, batch * capacity, debugContext("samples"));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("spikeMatmulForward"));
    const std::string name = vertexName("SpikeMatmulForward", weight.elementType());
    for (unsigned t = 0; t < split.tiles; ++t) {
      const unsigned tile = split.firstTile + t;
      const std::size_t r0 = t * split.perTile;
      const std::size_t r1 = std::min<std::size_t>(r0 + split.perTile, nIn);
      g.setTileMapping(partials[t], tile);
      poplar::VertexRef v = g.addVertex(cs, name);
      g.connect(v["ids"], ids);
      g.connect(v["counts"], counts);
      g.connect(v["weight"], weight.slice(r0, r1, 0).flatten());
      g.connect(v["offsets"], offsets[t]);
      g.connect(v["samples"], samples[t]);
      g.connect(v["partial"], partials[t].flatten());
      g.setInitialValue(v["capacity"], static_cast<unsigned>(capacity));
      g.setInitialValue(v["rowBegin"], static_cast<unsigned>(r0));
      g.setInitialValue(v["rowEnd"], static_cast<unsigned>(r1));
      g.setInitialValue(v["numCols"], static_cast<unsigned>(nOut));
      g.setTileMapping(v, tile);
      // Index build plus one add per (listed entry of the slice, column).
      g.setPerfEstimate(v, 8 * (nIn + batch * capacity) +
                               (r1 - r0) * nOut * batch * capacity / std::max<std::size_t>(nIn, 1));
    }
    prog.add(poplar::program::Execute(cs, debugContext("spikeMatmulForward")));
    // Sum the per-tile partials (float) into the output (weight's type).
    poplar::Tensor out = popops::reduce(g, partials, weight.elementType(), {0},
                                        popops::ReduceParams(popops::Operation::ADD), prog,
                                        debugContext("sumPartials"));
    setOutTensor(0, out);
  }
};

class SpikeMatmulGradWeightOpx : public popart::popx::Opx {
public:
  SpikeMatmulGradWeightOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<SpikeMatmulGradWeightOp>(op, {kSpikeMatmulGradWeight});
  }

  void grow(poplar::program::Sequence &prog) const final {
    const SpikeMatmulGradWeightOp &op = getOp<SpikeMatmulGradWeightOp>();
    poplar::Graph &g = graph();
    addSpikeCodelets(g);
    const poplar::Tensor gradOut = getInTensor(0);
    const poplar::Tensor ids = getInTensor(1).flatten();
    const poplar::Tensor counts = getInTensor(2);
    const std::size_t batch = counts.dim(0), capacity = getInTensor(1).dim(1);
    const std::size_t nIn = static_cast<std::size_t>(outShape(0)[0]);
    const std::size_t nOut = gradOut.dim(1);
    const RowSplit split = splitRows(g, op.tiles(), nIn);

    poplar::Tensor gradWeight = g.addVariable(poplar::FLOAT, {nIn, nOut}, debugContext("gradWeight"));
    poplar::Tensor offsets = addScratch(g, split, nIn + 1, debugContext("offsets"));
    poplar::Tensor samples = addScratch(g, split, batch * capacity, debugContext("samples"));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("spikeMatmulGradWeight"));
    const std::string name = vertexName("SpikeMatmulGradWeight", gradOut.elementType());
    for (unsigned t = 0; t < split.tiles; ++t) {
      const unsigned tile = split.firstTile + t;
      const std::size_t r0 = t * split.perTile;
      const std::size_t r1 = std::min<std::size_t>(r0 + split.perTile, nIn);
      poplar::Tensor rows = gradWeight.slice(r0, r1, 0);
      g.setTileMapping(rows, tile);
      poplar::VertexRef v = g.addVertex(cs, name);
      g.connect(v["ids"], ids);
      g.connect(v["counts"], counts);
      g.connect(v["gradOut"], gradOut.flatten());
      g.connect(v["offsets"], offsets[t]);
      g.connect(v["samples"], samples[t]);
      g.connect(v["gradWeight"], rows.flatten());
      g.setInitialValue(v["capacity"], static_cast<unsigned>(capacity));
      g.setInitialValue(v["rowBegin"], static_cast<unsigned>(r0));
      g.setInitialValue(v["rowEnd"], static_cast<unsigned>(r1));
      g.setInitialValue(v["numCols"], static_cast<unsigned>(nOut));
      g.setTileMapping(v, tile);
      g.setPerfEstimate(v, 8 * (nIn + batch * capacity) + (r1 - r0) * nOut);
    }
    prog.add(poplar::program::Execute(cs, debugContext("spikeMatmulGradWeight")));
    const poplar::Type outType = gradOut.elementType();
    if (outType == poplar::FLOAT) {
      setOutTensor(0, gradWeight);
    } else {
      setOutTensor(0, popops::cast(g, gradWeight, outType, prog, debugContext("castGradWeight")));
    }
  }
};

class SpikeMatmulGradInputOpx : public popart::popx::Opx {
public:
  SpikeMatmulGradInputOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<SpikeMatmulGradInputOp>(op, {kSpikeMatmulGradInput});
  }

  void grow(poplar::program::Sequence &prog) const final {
    const SpikeMatmulGradInputOp &op = getOp<SpikeMatmulGradInputOp>();
    poplar::Graph &g = graph();
    addSpikeCodelets(g);
    const poplar::Tensor ids = getInTensor(0).flatten();
    const poplar::Tensor counts = getInTensor(1);
    const poplar::Tensor weight = getInTensor(2);
    const poplar::Tensor gradOut = getInTensor(3);
    const std::size_t batch = counts.dim(0), capacity = getInTensor(0).dim(1);
    const std::size_t nIn = weight.dim(0), nOut = weight.dim(1);
    const RowSplit split = splitRows(g, op.tiles(), nIn);

    poplar::Tensor partials = g.addVariable(weight.elementType(), {split.tiles, batch * capacity},
                                            debugContext("partials"));
    poplar::Tensor offsets = addScratch(g, split, nIn + 1, debugContext("offsets"));
    poplar::Tensor samples = addScratch(g, split, batch * capacity, debugContext("samples"));
    poplar::Tensor slots = addScratch(g, split, batch * capacity, debugContext("slots"));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("spikeMatmulGradInput"));
    const std::string name = vertexName("SpikeMatmulGradInput", weight.elementType());
    for (unsigned t = 0; t < split.tiles; ++t) {
      const unsigned tile = split.firstTile + t;
      const std::size_t r0 = t * split.perTile;
      const std::size_t r1 = std::min<std::size_t>(r0 + split.perTile, nIn);
      g.setTileMapping(partials[t], tile);
      poplar::VertexRef v = g.addVertex(cs, name);
      g.connect(v["ids"], ids);
      g.connect(v["counts"], counts);
      g.connect(v["weight"], weight.slice(r0, r1, 0).flatten());
      g.connect(v["gradOut"], gradOut.flatten());
      g.connect(v["offsets"], offsets[t]);
      g.connect(v["samples"], samples[t]);
      g.connect(v["slots"], slots[t]);
      g.connect(v["partial"], partials[t]);
      g.setInitialValue(v["capacity"], static_cast<unsigned>(capacity));
      g.setInitialValue(v["rowBegin"], static_cast<unsigned>(r0));
      g.setInitialValue(v["rowEnd"], static_cast<unsigned>(r1));
      g.setInitialValue(v["numCols"], static_cast<unsigned>(nOut));
      g.setTileMapping(v, tile);
      g.setPerfEstimate(v, 8 * (nIn + batch * capacity) +
                               (r1 - r0) * nOut * batch * capacity / std::max<std::size_t>(nIn, 1));
    }
    prog.add(poplar::program::Execute(cs, debugContext("spikeMatmulGradInput")));
    // Each listed position is owned by exactly one tile, so the sum is exact.
    poplar::Tensor values = popops::reduce(g, partials, {0},
                                           popops::ReduceParams(popops::Operation::ADD), prog,
                                           debugContext("sumPartials"));
    setOutTensor(0, values.reshape({batch, capacity}));
  }
};

class SpikeSelectOpx : public popart::popx::Opx {
public:
  SpikeSelectOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<SpikeSelectOp>(op, {kSpikeSelect});
  }

  // One vertex per sample; samples are spread evenly over the tile range.
  void grow(poplar::program::Sequence &prog) const final {
    const SpikeSelectOp &op = getOp<SpikeSelectOp>();
    poplar::Graph &g = graph();
    addSpikeCodelets(g);
    const poplar::Tensor membrane = getInTensor(0);
    const std::size_t batch = membrane.dim(0), n = membrane.dim(1);
    const std::size_t capacity = static_cast<std::size_t>(op.capacity());
    const RowSplit split = splitRows(g, op.tiles(), batch);
    const bool useNear = op.nearThreshold() < op.threshold();

    poplar::Tensor ids = g.addVariable(poplar::INT, {batch, capacity}, debugContext("ids"));
    poplar::Tensor counts = g.addVariable(poplar::INT, {batch, 4}, debugContext("counts"));
    poplar::Tensor spikeMask = g.addVariable(poplar::UNSIGNED_CHAR, {batch, n}, debugContext("spikeMask"));
    poplar::Tensor nearMask = g.addVariable(poplar::UNSIGNED_CHAR, {batch, n}, debugContext("nearMask"));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("spikeSelect"));
    const std::string name = vertexName("SpikeSelect", membrane.elementType());
    for (std::size_t b = 0; b < batch; ++b) {
      const unsigned tile = split.firstTile + static_cast<unsigned>(b / split.perTile);
      g.setTileMapping(ids[b], tile);
      g.setTileMapping(counts[b], tile);
      g.setTileMapping(spikeMask[b], tile);
      g.setTileMapping(nearMask[b], tile);
      poplar::VertexRef v = g.addVertex(cs, name);
      g.connect(v["membrane"], membrane[b]);
      g.connect(v["spikeMask"], spikeMask[b]);
      g.connect(v["nearMask"], nearMask[b]);
      g.connect(v["ids"], ids[b]);
      g.connect(v["counts"], counts[b]);
      g.setInitialValue(v["threshold"], op.threshold());
      g.setInitialValue(v["nearThreshold"], op.nearThreshold());
      g.setInitialValue(v["useNear"], static_cast<unsigned>(useNear ? 1 : 0));
      g.setTileMapping(v, tile);
      g.setPerfEstimate(v, 4 * n + capacity);
    }
    prog.add(poplar::program::Execute(cs, debugContext("spikeSelect")));
    setOutTensor(0, ids);
    setOutTensor(1, counts);
  }
};

popart::popx::OpxCreator<SpikeMatmulOpx> spikeMatmulOpxCreator(kSpikeMatmul);
popart::popx::OpxCreator<SpikeMatmulGradWeightOpx> spikeMatmulGradWeightOpxCreator(
    kSpikeMatmulGradWeight);
popart::popx::OpxCreator<SpikeMatmulGradInputOpx> spikeMatmulGradInputOpxCreator(
    kSpikeMatmulGradInput);
popart::popx::OpxCreator<SpikeSelectOpx> spikeSelectOpxCreator(kSpikeSelect);

}  // namespace
