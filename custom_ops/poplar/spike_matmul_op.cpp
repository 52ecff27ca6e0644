// PopART custom ops of the sparse spike matmul (Poplar SDK 3.x).
//
// Built into libspike_matmul_op.so by `make -C custom_ops ipu`; PopTorch reaches
// it after ctypes.cdll.LoadLibrary(...) through
//   poptorch.custom_op([ids, counts, weight], "SpikeMatmul", "ipu_snn", 1,
//                      example_outputs=[out], attributes={...})
//   poptorch.custom_op([ids, listed_counts, weight, grad_out],
//                      "SpikeMatmulGradInput", "ipu_snn", 1, ...)
//   poptorch.custom_op([membrane], "SpikeSelect", "ipu_snn", 1, ...)
//   poptorch.custom_op([z, ids, counts, weight], "SpikeLinear", "ipu_snn", 1,
//                      example_outputs=[out], attributes={"dense_grad": 1, ...})
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
//   SpikeLinear:          z [B, N_in] (the dense 0/1 spikes, differentiable),
//                         ids int32 [B, K], counts int32 [B] (z's spike list),
//                         weight [N_in, N_out] -> out [B, N_out] (weight's type).
//                         The forward reads only the list; z is there so that
//                         PopART's autodiff has a path to the spikes, which
//                         SpikeMatmul lacks. Grad ops:
//     SpikeLinearGradWeight (SpikeMatmulGradWeight's vertices):
//                         grad_out, ids, counts -> grad_weight
//     SpikeLinearGradSpikes: grad_out, weight (, ids, counts) -> grad_z [B, N_in]
//                         (z's type): dense_grad = 1, the exact
//                         grad_out @ weight^T (poplin::matMul); dense_grad = 0,
//                         SpikeMatmulGradInput's values scattered to the listed
//                         neurons (ScatterListed), 0 at the others.
//
// Attributes: capacity (K, SpikeSelect), threshold, near_threshold (SpikeSelect;
// near_threshold >= threshold turns the second threshold off), dense_grad
// (SpikeLinear, default 1), tile_begin, tile_end (the tile range; tile_end <= 0
// means the last tile of the graph).
//
// Tile mapping (tiled_ops.hpp, ipu_snn/ipu/tiles.py): the N_out postsynaptic
// neurons are split over the tile range by tiling::splitEven, the planner's
// split_even. A tile owns the weight columns W[:, own] (the op creates the
// weight input that way), receives the whole spike list, and computes
//   forward:     out[:, own]                  (stays on the tile, no reduce)
//   grad weight: grad_W[:, own]               (local: grad_out[:, own] is there)
//   grad input:  a partial [B, K] over its own columns, summed over the tiles
//                by popops::reduce.
// SpikeSelect selects sample b on tile b mod tiles of its range (the plan's
// rule), and ScatterListed writes sample b's gradient row on that tile too.
// The dense z gradient is poplin's matmul, which plans its own layout.
//
// The codelets (spike_codelets.cpp, neuron_codelets.cpp) are loaded from the
// precompiled spike_codelets.gp next to this library, or from IPU_SNN_CODELETS.
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <popart/op.hpp>
#include <popart/opmanager.hpp>
#include <popart/opserialiser.hpp>
#include <popart/popx/opx.hpp>
#include <popart/popx/opxmanager.hpp>

#include <poplar/Graph.hpp>
#include <poplar/Program.hpp>
#include <poplin/MatMul.hpp>
#include <popops/Cast.hpp>
#include <popops/Reduce.hpp>

#include "tiled_ops.hpp"

namespace {

using ipu_snn::popart_ops::ColumnSplit;
using ipu_snn::popart_ops::TiledOp;
using ipu_snn::popart_ops::TileRange;
using ipu_snn::popart_ops::TileSpan;
using ipu_snn::popart_ops::addCodelets;
using ipu_snn::popart_ops::addColumnMapped;
using ipu_snn::popart_ops::addScratch;
using ipu_snn::popart_ops::castTo;
using ipu_snn::popart_ops::columnBlock;
using ipu_snn::popart_ops::floatType;
using ipu_snn::popart_ops::perWorkerCycles;
using ipu_snn::popart_ops::readTileRange;
using ipu_snn::popart_ops::resolveTiles;
using ipu_snn::popart_ops::splitColumns;
using ipu_snn::popart_ops::vertexName;

const popart::OperatorIdentifier kSpikeMatmul = {"ipu_snn", "SpikeMatmul", 1, {3, 3}, 1};
const popart::OperatorIdentifier kSpikeMatmulGradWeight = {
    "ipu_snn", "SpikeMatmulGradWeight", 1, {3, 3}, 1};
const popart::OperatorIdentifier kSpikeMatmulGradInput = {
    "ipu_snn", "SpikeMatmulGradInput", 1, {4, 4}, 1};
const popart::OperatorIdentifier kSpikeSelect = {"ipu_snn", "SpikeSelect", 1, {1, 1}, 2};
const popart::OperatorIdentifier kSpikeLinear = {"ipu_snn", "SpikeLinear", 1, {4, 4}, 1};
const popart::OperatorIdentifier kSpikeLinearGradWeight = {
    "ipu_snn", "SpikeLinearGradWeight", 1, {3, 3}, 1};
const popart::OperatorIdentifier kSpikeLinearGradSpikes = {
    "ipu_snn", "SpikeLinearGradSpikes", 1, {2, 4}, 1};

// Where a forward op takes the spike list and the weight: the weight-gradient
// op is the same for SpikeMatmul and SpikeLinear, only these indices differ.
struct SpikeListInputs {
  popart::InIndex ids;
  popart::InIndex counts;
  popart::InIndex weight;
};

// ------------------------------------------------------------------ IR ops --

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

// Gradient w.r.t. the weight of a forward op (SpikeMatmul or SpikeLinear)
// whose output 0 is spikes @ weight: grad_out [B, N_out], ids, counts ->
// grad_weight. ids and counts have no gradient.
class SpikeMatmulGradWeightOp : public TiledOp {
public:
  SpikeMatmulGradWeightOp(const TiledOp &fwd, const popart::OperatorIdentifier &opid,
                          SpikeListInputs in)
      : TiledOp(opid, fwd.tiles(), fwd.settings),
        weightInfo_(fwd.inInfo(in.weight)),
        gradInputInfo_{{0, 0, popart::GradOpInType::GradOut},
                       {1, in.ids, popart::GradOpInType::In},
                       {2, in.counts, popart::GradOpInType::In}},
        gradOutToNonGradIn_{{0, in.weight}} {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeMatmulGradWeightOp>(*this);
  }

  void setup() final { outInfo(0) = weightInfo_; }

  const std::vector<popart::GradInOutMapper> &gradInputInfo() const final {
    return gradInputInfo_;
  }

  const std::map<int, int> &gradOutToNonGradIn() const final { return gradOutToNonGradIn_; }

private:
  popart::TensorInfo weightInfo_;
  std::vector<popart::GradInOutMapper> gradInputInfo_;
  std::map<int, int> gradOutToNonGradIn_;
};

std::vector<std::unique_ptr<popart::Op>> SpikeMatmulOp::getGradOps() {
  std::vector<std::unique_ptr<popart::Op>> ops;
  ops.emplace_back(std::make_unique<SpikeMatmulGradWeightOp>(
      *this, kSpikeMatmulGradWeight, SpikeListInputs{0, 1, 2}));
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

class SpikeLinearOp : public TiledOp {
public:
  enum In : popart::InIndex { kZ = 0, kIds, kCounts, kWeight };

  SpikeLinearOp(const popart::OperatorIdentifier &opid, bool denseGrad, TileRange tiles,
                const popart::Op::Settings &settings)
      : TiledOp(opid, tiles, settings), denseGrad_(denseGrad) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeLinearOp>(*this);
  }

  // out [B, N_out] in the weight's type; the shapes must agree.
  void setup() final {
    const popart::Shape &z = inShape(kZ), &ids = inShape(kIds), &counts = inShape(kCounts),
                        &weight = inShape(kWeight);
    if (z.size() != 2 || ids.size() != 2 || counts.size() != 1 || weight.size() != 2) {
      throw popart::error("ipu_snn SpikeLinear: expected z [B, N_in], ids [B, K], counts [B], "
                          "weight [N_in, N_out]; got ranks {}, {}, {}, {}",
                          z.size(), ids.size(), counts.size(), weight.size());
    }
    if (ids[0] != z[0] || counts[0] != z[0] || weight[0] != z[1]) {
      throw popart::error("ipu_snn SpikeLinear: z [{}, {}], ids [{}, {}], counts [{}] and "
                          "weight [{}, {}] do not match",
                          z[0], z[1], ids[0], ids[1], counts[0], weight[0], weight[1]);
    }
    outInfo(0) = popart::TensorInfo(inInfo(kWeight).dataType(), popart::Shape{z[0], weight[1]});
  }

  std::vector<std::unique_ptr<popart::Op>> getGradOps() final;

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    TiledOp::appendOutlineAttributes(os);
    os.appendAttribute("dense_grad", static_cast<int64_t>(denseGrad_ ? 1 : 0));
  }

  bool denseGrad() const { return denseGrad_; }

private:
  bool denseGrad_;
};

// Gradient w.r.t. SpikeLinear's z: grad_out [B, N_out], weight, and for the
// sparse form also ids and counts -> grad_z [B, N_in] in z's type.
class SpikeLinearGradSpikesOp : public TiledOp {
public:
  enum In : popart::InIndex { kGradOut = 0, kWeight, kIds, kCounts };

  explicit SpikeLinearGradSpikesOp(const SpikeLinearOp &fwd)
      : TiledOp(kSpikeLinearGradSpikes, fwd.tiles(), fwd.settings),
        denseGrad_(fwd.denseGrad()),
        zInfo_(fwd.inInfo(SpikeLinearOp::kZ)) {
    gradInputInfo_ = {{kGradOut, 0, popart::GradOpInType::GradOut},
                      {kWeight, SpikeLinearOp::kWeight, popart::GradOpInType::In}};
    if (!denseGrad_) {
      // Only the sparse form reads the list: the dense one keeps ids and counts
      // out of the backward pass altogether.
      gradInputInfo_.emplace_back(kIds, SpikeLinearOp::kIds, popart::GradOpInType::In);
      gradInputInfo_.emplace_back(kCounts, SpikeLinearOp::kCounts, popart::GradOpInType::In);
    }
  }

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<SpikeLinearGradSpikesOp>(*this);
  }

  void setup() final { outInfo(0) = zInfo_; }

  const std::vector<popart::GradInOutMapper> &gradInputInfo() const final {
    return gradInputInfo_;
  }

  const std::map<int, int> &gradOutToNonGradIn() const final {
    static const std::map<int, int> info = {{0, SpikeLinearOp::kZ}};
    return info;
  }

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    TiledOp::appendOutlineAttributes(os);
    os.appendAttribute("dense_grad", static_cast<int64_t>(denseGrad_ ? 1 : 0));
  }

  bool denseGrad() const { return denseGrad_; }

private:
  bool denseGrad_;
  popart::TensorInfo zInfo_;
  std::vector<popart::GradInOutMapper> gradInputInfo_;
};

std::vector<std::unique_ptr<popart::Op>> SpikeLinearOp::getGradOps() {
  std::vector<std::unique_ptr<popart::Op>> ops;
  ops.emplace_back(std::make_unique<SpikeMatmulGradWeightOp>(
      *this, kSpikeLinearGradWeight, SpikeListInputs{kIds, kCounts, kWeight}));
  ops.emplace_back(std::make_unique<SpikeLinearGradSpikesOp>(*this));
  return ops;
}

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

const popart::OpDefinition kSpikeLinearDef(
    {popart::OpDefinition::Inputs({{"z", kFloatTypes},
                                   {"ids", kIntTypes},
                                   {"counts", kIntTypes},
                                   {"weight", kFloatTypes}}),
     popart::OpDefinition::Outputs({{"out", kFloatTypes}}),
     popart::OpDefinition::Attributes(
         {{"dense_grad", {"*"}}, {"tile_begin", {"*"}}, {"tile_end", {"*"}}})});

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

popart::OpCreator<SpikeLinearOp> spikeLinearCreator(
    popart::OpDefinitions({{kSpikeLinear, kSpikeLinearDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      const bool denseGrad =
          info.attributes.getAttribute<popart::Attributes::Int>("dense_grad", 1) != 0;
      return std::make_unique<SpikeLinearOp>(info.opid, denseGrad, readTileRange(info),
                                             info.settings);
    },
    true);

// ------------------------------------------------------------ Poplar lowering --

// Adds one matmul vertex per owning tile with the fields every matmul vertex
// has: the broadcast spike list and its column range.
struct MatmulVertices {
  poplar::Graph &graph;
  const ColumnSplit &split;
  poplar::ComputeSet cs;
  std::string name;
  poplar::Tensor ids, counts;
  std::size_t capacity;

  poplar::VertexRef add(std::size_t j) {
    poplar::VertexRef v = graph.addVertex(cs, name);
    graph.connect(v["ids"], ids);
    graph.connect(v["counts"], counts);
    graph.setInitialValue(v["capacity"], static_cast<unsigned>(capacity));
    graph.setInitialValue(v["colBegin"], static_cast<unsigned>(split.columns[j].begin));
    graph.setInitialValue(v["colEnd"], static_cast<unsigned>(split.columns[j].end));
    graph.setTileMapping(v, split.tile(j));
    return v;
  }
};

// Cycles of one matmul vertex, over its workers: one add (or multiply-add) per
// listed entry and own column, plus a walk of the list.
std::uint64_t matmulCycles(const poplar::Graph &graph, std::size_t listed, std::size_t width) {
  return perWorkerCycles(graph, listed * (width + 4));
}

// The compute sets of the spike-matmul ops, shared by their Opx: SpikeMatmul
// and SpikeLinear run the same forward and weight gradient, and SpikeLinear's
// sparse z gradient is SpikeMatmulGradInput's values scattered to rows.
class SpikeOpx : public popart::popx::Opx {
public:
  SpikeOpx(popart::Op *op, popart::popx::Devicex *devicex) : popart::popx::Opx(op, devicex) {
    addCodelets(graph());
  }

protected:
  const TileRange &tiles() const { return getOp<TiledOp>().tiles(); }

  // A compute set of `vertex`s (a vertexName) over the split.
  MatmulVertices matmulVertices(const std::string &vertex, const ColumnSplit &split,
                                const poplar::Tensor &ids, const poplar::Tensor &counts) const {
    poplar::Graph &g = graph();
    return MatmulVertices{g, split, g.addComputeSet(debugContext(vertex)), vertex,
                          ids.flatten(), counts, ids.dim(1)};
  }

  // spikes @ weight [B, N_out] in the weight's type; out[:, own] on its tile.
  poplar::Tensor growForward(poplar::program::Sequence &prog, const poplar::Tensor &ids,
                             const poplar::Tensor &counts, const poplar::Tensor &weight) const {
    poplar::Graph &g = graph();
    const std::size_t batch = counts.dim(0), listed = ids.dim(0) * ids.dim(1);
    const std::size_t nOut = weight.dim(1);
    const ColumnSplit split = splitColumns(g, tiles(), nOut);
    // Float sums, laid out like the weight's columns.
    poplar::Tensor out = addColumnMapped(g, poplar::FLOAT, {batch}, split, debugContext("out"));
    MatmulVertices vertices =
        matmulVertices(vertexName("SpikeMatmulForward", weight.elementType()), split, ids, counts);
    for (std::size_t j = 0; j < split.columns.size(); ++j) {
      poplar::VertexRef v = vertices.add(j);
      g.connect(v["weight"], columnBlock(weight, split.columns[j]));
      g.connect(v["out"], columnBlock(out, split.columns[j]));
      g.setPerfEstimate(v, matmulCycles(g, listed, split.columns[j].size()));
    }
    prog.add(poplar::program::Execute(vertices.cs, debugContext("spikeMatmulForward")));
    return castTo(g, out, weight.elementType(), prog, debugContext("castOut"));
  }

  // spikes^T @ grad_out [N_in, N_out] in `weightType`, the type the IR gives
  // the weight's gradient; grad_W[:, own] on its tile, where the weight's
  // columns are.
  poplar::Tensor growGradWeight(poplar::program::Sequence &prog, const poplar::Tensor &gradOut,
                                const poplar::Tensor &ids, const poplar::Tensor &counts,
                                std::size_t nIn, const poplar::Type &weightType) const {
    poplar::Graph &g = graph();
    const std::size_t listed = ids.dim(0) * ids.dim(1), nOut = gradOut.dim(1);
    const ColumnSplit split = splitColumns(g, tiles(), nOut);
    poplar::Tensor gradWeight =
        addColumnMapped(g, poplar::FLOAT, {nIn}, split, debugContext("gradWeight"));
    MatmulVertices vertices =
        matmulVertices(vertexName("SpikeMatmulGradWeight", gradOut.elementType()), split, ids,
                       counts);
    for (std::size_t j = 0; j < split.columns.size(); ++j) {
      poplar::VertexRef v = vertices.add(j);
      g.connect(v["gradOut"], columnBlock(gradOut, split.columns[j]));
      g.connect(v["gradWeight"], columnBlock(gradWeight, split.columns[j]));
      g.setPerfEstimate(v, matmulCycles(g, listed, split.columns[j].size()) +
                               nIn * split.columns[j].size());
    }
    prog.add(poplar::program::Execute(vertices.cs, debugContext("spikeMatmulGradWeight")));
    return castTo(g, gradWeight, weightType, prog, debugContext("castGradWeight"));
  }

  // values [B, K] = <weight[ids[b, k]], grad_out[b]> at the listed slots, 0
  // elsewhere, in the weight's type: a partial per tile over its own columns,
  // summed over the tiles. A grad_out of another type is cast to the weight's
  // first (the vertex takes one type).
  poplar::Tensor growListedGradInput(poplar::program::Sequence &prog, const poplar::Tensor &ids,
                                     const poplar::Tensor &counts, const poplar::Tensor &weight,
                                     const poplar::Tensor &gradOutIn) const {
    poplar::Graph &g = graph();
    const poplar::Type type = weight.elementType();
    const poplar::Tensor gradOut = castTo(g, gradOutIn, type, prog, debugContext("castGradOut"));
    const std::size_t batch = ids.dim(0), capacity = ids.dim(1), listed = batch * capacity;
    const std::size_t nOut = weight.dim(1);
    const ColumnSplit split = splitColumns(g, tiles(), nOut);
    poplar::Tensor partials = addScratch(g, type, split, listed, debugContext("partials"));
    MatmulVertices vertices =
        matmulVertices(vertexName("SpikeMatmulGradInput", type), split, ids, counts);
    for (std::size_t j = 0; j < split.columns.size(); ++j) {
      poplar::VertexRef v = vertices.add(j);
      g.connect(v["weight"], columnBlock(weight, split.columns[j]));
      g.connect(v["gradOut"], columnBlock(gradOut, split.columns[j]));
      g.connect(v["partial"], partials[j]);
      g.setPerfEstimate(v, matmulCycles(g, listed, split.columns[j].size()));
    }
    prog.add(poplar::program::Execute(vertices.cs, debugContext("spikeMatmulGradInput")));
    // Sum over the tiles: popops spreads the reduction (a reduce-scatter over
    // the range's tiles in effect, as the tile plan counts it).
    poplar::Tensor values = popops::reduce(g, partials, {0},
                                           popops::ReduceParams(popops::Operation::ADD), prog,
                                           debugContext("sumPartials"));
    return values.reshape({batch, capacity});
  }

  // Dense rows [B, n] of listed values [B, K]: sample b's on tile b mod tiles
  // of the range (as SpikeSelect places it), 0 at the neurons it did not list.
  poplar::Tensor growScatterListed(poplar::program::Sequence &prog, const poplar::Tensor &values,
                                   const poplar::Tensor &ids, const poplar::Tensor &counts,
                                   std::size_t n) const {
    poplar::Graph &g = graph();
    const std::size_t batch = values.dim(0), capacity = values.dim(1);
    const TileSpan span = resolveTiles(g, tiles());
    poplar::Tensor rows = g.addVariable(values.elementType(), {batch, n}, debugContext("rows"));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("scatterListed"));
    const std::string name = vertexName("ScatterListed", values.elementType());
    for (std::size_t b = 0; b < batch; ++b) {
      const unsigned tile = span.first + static_cast<unsigned>(b % span.count);
      g.setTileMapping(rows[b], tile);
      poplar::VertexRef v = g.addVertex(cs, name);
      g.connect(v["values"], values[b]);
      g.connect(v["ids"], ids[b]);
      g.connect(v["count"], counts[b]);
      g.connect(v["out"], rows[b]);
      g.setTileMapping(v, tile);
      g.setPerfEstimate(v, perWorkerCycles(g, n + 4 * capacity));
    }
    prog.add(poplar::program::Execute(cs, debugContext("scatterListed")));
    return rows;
  }
};

// The Opx that read a weight (SpikeMatmul's and SpikeMatmulGradInput's input
// 2, SpikeLinear's input 3) create it column-split, so every tile's W[:, own]
// is one contiguous block on that tile and the vertices read it in place.
class ColumnWeightOpx : public SpikeOpx {
public:
  ColumnWeightOpx(popart::Op *op, popart::popx::Devicex *devicex, popart::InIndex weightIn)
      : SpikeOpx(op, devicex), weightIn_(weightIn) {}

  popart::popx::InputCreatorType getInputCreatorType(popart::InIndex index) const override {
    return index == weightIn_ ? popart::popx::InputCreatorType::CanCreate
                              : popart::popx::Opx::getInputCreatorType(index);
  }

  poplar::Tensor createInput(popart::InIndex index,
                             const poplar::DebugNameAndId &dnai) const override {
    if (index != weightIn_) {
      throw popart::error("ipu_snn: a spike matmul creates only its weight input {}, not input {}",
                          weightIn_, index);
    }
    const popart::Shape &shape = inShape(weightIn_);
    const std::size_t nIn = static_cast<std::size_t>(shape[0]);
    const std::size_t nOut = static_cast<std::size_t>(shape[1]);
    const ColumnSplit split = splitColumns(graph(), tiles(), nOut);
    return addColumnMapped(graph(), floatType(inInfo(weightIn_).dataType()), {nIn}, split,
                           poplar::DebugContext(dnai, "weight"));
  }

  // The layout needs no other tensor to exist first.
  std::set<popart::TensorId> mustExistBeforeCreate(popart::InIndex) const override {
    return {};
  }

  // Two ops that both create a weight lay it out the same way only if their tile
  // ranges match; PopART then needs just one of them.
  bool createsEquiv(int, const popart::popx::Opx *, int) const override { return false; }

private:
  popart::InIndex weightIn_;
};

class SpikeMatmulOpx : public ColumnWeightOpx {
public:
  SpikeMatmulOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : ColumnWeightOpx(op, devicex, 2) {
    verifyOp<SpikeMatmulOp>(op, {kSpikeMatmul});
  }

  void grow(poplar::program::Sequence &prog) const final {
    setOutTensor(0, growForward(prog, getInTensor(0), getInTensor(1), getInTensor(2)));
  }
};

// The weight gradient of SpikeMatmul and of SpikeLinear (one grad op class).
class SpikeMatmulGradWeightOpx : public SpikeOpx {
public:
  SpikeMatmulGradWeightOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : SpikeOpx(op, devicex) {
    verifyOp<SpikeMatmulGradWeightOp>(op, {kSpikeMatmulGradWeight, kSpikeLinearGradWeight});
  }

  void grow(poplar::program::Sequence &prog) const final {
    const std::size_t nIn = static_cast<std::size_t>(outShape(0)[0]);
    setOutTensor(0, growGradWeight(prog, getInTensor(0), getInTensor(1), getInTensor(2), nIn,
                                   floatType(outInfo(0).dataType())));
  }
};

class SpikeMatmulGradInputOpx : public ColumnWeightOpx {
public:
  SpikeMatmulGradInputOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : ColumnWeightOpx(op, devicex, 2) {
    verifyOp<SpikeMatmulGradInputOp>(op, {kSpikeMatmulGradInput});
  }

  void grow(poplar::program::Sequence &prog) const final {
    setOutTensor(0, growListedGradInput(prog, getInTensor(0), getInTensor(1), getInTensor(2),
                                        getInTensor(3)));
  }
};

// SpikeLinear's forward reads the list and the weight; z (input 0) only links
// the output to the spikes for PopART's autodiff.
class SpikeLinearOpx : public ColumnWeightOpx {
public:
  SpikeLinearOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : ColumnWeightOpx(op, devicex, SpikeLinearOp::kWeight) {
    verifyOp<SpikeLinearOp>(op, {kSpikeLinear});
  }

  void grow(poplar::program::Sequence &prog) const final {
    setOutTensor(0, growForward(prog, getInTensor(SpikeLinearOp::kIds),
                                getInTensor(SpikeLinearOp::kCounts),
                                getInTensor(SpikeLinearOp::kWeight)));
  }
};

class SpikeLinearGradSpikesOpx : public SpikeOpx {
public:
  SpikeLinearGradSpikesOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : SpikeOpx(op, devicex) {
    verifyOp<SpikeLinearGradSpikesOp>(op, {kSpikeLinearGradSpikes});
  }

  void grow(poplar::program::Sequence &prog) const final {
    const SpikeLinearGradSpikesOp &op = getOp<SpikeLinearGradSpikesOp>();
    const poplar::Tensor gradOut = getInTensor(SpikeLinearGradSpikesOp::kGradOut);
    const poplar::Tensor weight = getInTensor(SpikeLinearGradSpikesOp::kWeight);
    const poplar::Type zType = floatType(outInfo(0).dataType());
    if (op.denseGrad()) {
      // Exact: every neuron gets grad_out @ weight^T, so surrogates whose
      // support is unbounded see their whole gradient. Both operands in the
      // weight's type, the product in z's.
      const poplar::Tensor g = castTo(graph(), gradOut, weight.elementType(), prog,
                                      debugContext("castGradOut"));
      setOutTensor(0, poplin::matMul(graph(), g, weight.transpose(), prog, zType,
                                     debugContext("gradSpikes")));
      return;
    }
    // Sparse: only the listed neurons get a gradient.
    const poplar::Tensor ids = getInTensor(SpikeLinearGradSpikesOp::kIds);
    const poplar::Tensor counts = getInTensor(SpikeLinearGradSpikesOp::kCounts);
    const poplar::Tensor values = growListedGradInput(prog, ids, counts, weight, gradOut);
    const poplar::Tensor rows = growScatterListed(prog, values, ids, counts, weight.dim(0));
    setOutTensor(0, castTo(graph(), rows, zType, prog, debugContext("castGradSpikes")));
  }
};

class SpikeSelectOpx : public popart::popx::Opx {
public:
  SpikeSelectOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<SpikeSelectOp>(op, {kSpikeSelect});
    addCodelets(graph());
  }

  // One vertex per sample (it needs the sample's whole membrane row); sample b
  // is selected on tile b mod tiles of the range, as the tile plan has it.
  void grow(poplar::program::Sequence &prog) const final {
    const SpikeSelectOp &op = getOp<SpikeSelectOp>();
    poplar::Graph &g = graph();
    const poplar::Tensor membrane = getInTensor(0);
    const std::size_t batch = membrane.dim(0), n = membrane.dim(1);
    const std::size_t capacity = static_cast<std::size_t>(op.capacity());
    const TileSpan tiles = resolveTiles(g, op.tiles());
    const bool useNear = op.nearThreshold() < op.threshold();

    poplar::Tensor ids = g.addVariable(poplar::INT, {batch, capacity}, debugContext("ids"));
    poplar::Tensor counts = g.addVariable(poplar::INT, {batch, 4}, debugContext("counts"));
    poplar::Tensor spikeMask = g.addVariable(poplar::UNSIGNED_CHAR, {batch, n}, debugContext("spikeMask"));
    poplar::Tensor nearMask = g.addVariable(poplar::UNSIGNED_CHAR, {batch, n}, debugContext("nearMask"));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("spikeSelect"));
    const std::string name = vertexName("SpikeSelect", membrane.elementType());
    for (std::size_t b = 0; b < batch; ++b) {
      const unsigned tile = tiles.first + static_cast<unsigned>(b % tiles.count);
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
    std::vector<popart::OperatorIdentifier>{kSpikeMatmulGradWeight, kSpikeLinearGradWeight});
popart::popx::OpxCreator<SpikeMatmulGradInputOpx> spikeMatmulGradInputOpxCreator(
    kSpikeMatmulGradInput);
popart::popx::OpxCreator<SpikeSelectOpx> spikeSelectOpxCreator(kSpikeSelect);
popart::popx::OpxCreator<SpikeLinearOpx> spikeLinearOpxCreator(kSpikeLinear);
popart::popx::OpxCreator<SpikeLinearGradSpikesOpx> spikeLinearGradSpikesOpxCreator(
    kSpikeLinearGradSpikes);

}  // namespace
