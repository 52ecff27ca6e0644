// PopART custom ops of the fused LIF/ALIF neuron step (Poplar SDK 3.x).
//
// Built into libspike_matmul_op.so with the spike-matmul ops by
// `make -C custom_ops ipu`; PopTorch reaches them after
// ctypes.cdll.LoadLibrary(...) through
//   poptorch.custom_op([current, v_prev, a_prev, beta, rho], "NeuronStep",
//                      "ipu_snn", 1, example_outputs=[v, a, z, d, bits],
//                      attributes={"kind": "alif", ...})
// and, for a hand-written backward, "NeuronStepGrad" in the same domain.
//
// Ops (inputs -> outputs), B samples, N neurons, T = float32 or float16:
//   NeuronStep:     current, v_prev, a_prev [B, N] T, beta, rho [N] T
//                   -> v_new, a_new, z, d [B, N] T, bits uint8 [B, ceil(N / 8)]
//   NeuronStepGrad: grad_z, grad_v, grad_a [B, N] T, bits, d [B, N] T, beta, rho
//                   -> grad_current, grad_v_prev, grad_a_prev [B, N] T
// The math is neuron_core.h's (the contract in its header comment): d is the
// surrogate derivative saved in T, bits the spikes packed little-endian per
// row. NeuronStepGrad is NeuronStep's grad op (getGradOps), and is also
// registered on its own so that a custom autograd function can call it.
// For kind "lif", a_prev and rho are not read and a_new, grad_a_prev are 0.
// No gradient is produced for beta or rho: a learned decay needs v_prev
// (grad_beta = sum over samples of grad_current * v_prev), which the caller
// keeps and reduces itself. PopART leaves a gradient input of the grad op
// unconnected when its forward output gets no gradient (v_new and a_new of the
// last step, a_new of a LIF layer, z where nothing reads it; graphcore/popart
// willow/src/transforms/autodiff/gradgrowerop.cpp connects an empty TensorId
// for a GradOut whose gradient does not exist): such a gradient is zero.
//
// Attributes: kind ("lif" | "alif"), threshold, adapt_strength, reset
// ("subtract" | "zero"), surrogate ("fast_sigmoid" | "atan" | "triangle" |
// "boxcar"), scale, tile_begin, tile_end.
//
// Tile mapping: the same column split as the spike matmul (tiled_ops.hpp): the
// tile that owns column j of the layer's weights owns neuron j, its state, its
// decays and its gradients, so a step needs no exchange except the packed
// bytes that straddle a tile boundary (under 8 spikes per sample per tile).
#include <algorithm>
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

#include "neuron_core.h"
#include "tiled_ops.hpp"
#include "work_split.h"

namespace {

namespace core = ipu_snn::core;
namespace tiling = ipu_snn::tiling;
using ipu_snn::popart_ops::ColumnSplit;
using ipu_snn::popart_ops::TiledOp;
using ipu_snn::popart_ops::TileRange;
using ipu_snn::popart_ops::addCodelets;
using ipu_snn::popart_ops::addColumnMapped;
using ipu_snn::popart_ops::columnBlock;
using ipu_snn::popart_ops::floatType;
using ipu_snn::popart_ops::perWorkerCycles;
using ipu_snn::popart_ops::readTileRange;
using ipu_snn::popart_ops::splitColumns;
using ipu_snn::popart_ops::vertexName;
using ipu_snn::popart_ops::wordItems;
using ipu_snn::popart_ops::workersPerTile;

const popart::OperatorIdentifier kNeuronStep = {"ipu_snn", "NeuronStep", 1, {5, 5}, 5};
const popart::OperatorIdentifier kNeuronStepGrad = {"ipu_snn", "NeuronStepGrad", 1, {7, 7}, 3};

// ------------------------------------------------------------- attributes --

// The scalars of a layer's step, as the attributes give them.
struct NeuronParams {
  bool adaptive = false;
  float threshold = 1.0f;
  float adaptStrength = 0.0f;
  core::Reset reset = core::Reset::kSubtract;
  core::SurrogateKind surrogate = core::SurrogateKind::kFastSigmoid;
  float scale = 10.0f;
};

template <typename E>
E lookup(const std::map<std::string, E> &names, const std::string &attribute,
         const std::string &value) {
  const auto it = names.find(value);
  if (it != names.end()) return it->second;
  std::string known;
  for (const auto &kv : names) known += (known.empty() ? "" : ", ") + kv.first;
  throw popart::error("ipu_snn NeuronStep: attribute {} is '{}'; known: {}", attribute,
                      value, known);
}

NeuronParams readNeuronParams(const popart::OpCreatorInfo &info) {
  const popart::Attributes &a = info.attributes;
  NeuronParams p;
  p.adaptive = lookup<bool>({{"lif", false}, {"alif", true}}, "kind",
                            a.getAttribute<popart::Attributes::String>("kind", "lif"));
  p.threshold = a.getAttribute<popart::Attributes::Float>("threshold", 1.0f);
  p.adaptStrength = a.getAttribute<popart::Attributes::Float>("adapt_strength", 0.0f);
  p.reset = lookup<core::Reset>(
      {{"subtract", core::Reset::kSubtract}, {"zero", core::Reset::kZero}}, "reset",
      a.getAttribute<popart::Attributes::String>("reset", "subtract"));
  p.surrogate = lookup<core::SurrogateKind>(
      {{"fast_sigmoid", core::SurrogateKind::kFastSigmoid},
       {"atan", core::SurrogateKind::kAtan},
       {"triangle", core::SurrogateKind::kTriangle},
       {"boxcar", core::SurrogateKind::kBoxcar}},
      "surrogate", a.getAttribute<popart::Attributes::String>("surrogate", "fast_sigmoid"));
  p.scale = a.getAttribute<popart::Attributes::Float>("scale", 10.0f);
  if (!p.adaptive) p.adaptStrength = 0.0f;  // LIF: theta = threshold
  return p;
}

void appendNeuronParams(popart::OpSerialiserBase &os, const NeuronParams &p) {
  os.appendAttribute("kind", std::string(p.adaptive ? "alif" : "lif"));
  os.appendAttribute("threshold", p.threshold);
  os.appendAttribute("adapt_strength", p.adaptStrength);
  os.appendAttribute("reset", static_cast<int64_t>(p.reset));
  os.appendAttribute("surrogate", static_cast<int64_t>(p.surrogate));
  os.appendAttribute("scale", p.scale);
}

// ------------------------------------------------------------------ IR ops --

class NeuronStepOp : public TiledOp {
public:
  // Inputs and outputs by index.
  enum In : popart::InIndex { kCurrent = 0, kVPrev, kAPrev, kBeta, kRho };
  enum Out : popart::OutIndex { kVNew = 0, kANew, kZ, kD, kBits };

  NeuronStepOp(const popart::OperatorIdentifier &opid, const NeuronParams &params,
               TileRange tiles, const popart::Op::Settings &settings)
      : TiledOp(opid, tiles, settings), params_(params) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<NeuronStepOp>(*this);
  }

  // Shape inference: state outputs like the current, bits [B, ceil(N / 8)].
  void setup() final {
    const popart::TensorInfo &current = inInfo(kCurrent);
    const popart::Shape &shape = current.shape();
    if (shape.size() != 2) {
      throw popart::error("ipu_snn NeuronStep: current must be [batch, neurons], got rank {}",
                          shape.size());
    }
    for (popart::InIndex i : {kVPrev, kAPrev}) {
      if (inShape(i) != shape) {
        throw popart::error("ipu_snn NeuronStep: input {} must have the current's shape", i);
      }
    }
    for (popart::InIndex i : {kBeta, kRho}) {
      if (inShape(i) != popart::Shape{shape[1]}) {
        throw popart::error("ipu_snn NeuronStep: input {} (a decay) must be [neurons] = [{}]",
                            i, shape[1]);
      }
    }
    // One vertex type per step: every float input in the current's type.
    for (popart::InIndex i : {kVPrev, kAPrev, kBeta, kRho}) {
      if (inInfo(i).dataType() != current.dataType()) {
        throw popart::error("ipu_snn NeuronStep: input {} is {}, the current {}; cast them to one type",
                            i, inInfo(i).data_type(), current.data_type());
      }
    }
    for (popart::OutIndex o : {kVNew, kANew, kZ, kD}) outInfo(o) = current;
    outInfo(kBits) = popart::TensorInfo(
        popart::DataType::UINT8, popart::Shape{shape[0], core::packed_row_bytes(shape[1])});
  }

  std::vector<std::unique_ptr<popart::Op>> getGradOps() final;

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    TiledOp::appendOutlineAttributes(os);
    appendNeuronParams(os, params_);
  }

  const NeuronParams &params() const { return params_; }

private:
  NeuronParams params_;
};

class NeuronStepGradOp : public TiledOp {
public:
  enum In : popart::InIndex { kGradZ = 0, kGradV, kGradA, kBits, kD, kBeta, kRho };
  enum Out : popart::OutIndex { kGradCurrent = 0, kGradVPrev, kGradAPrev };

  // As NeuronStep's grad op: the output infos are those of the inputs it
  // differentiates.
  explicit NeuronStepGradOp(const NeuronStepOp &fwd)
      : TiledOp(kNeuronStepGrad, fwd.tiles(), fwd.settings), params_(fwd.params()) {}

  // Called directly (registered op): outputs are shaped like grad_v.
  NeuronStepGradOp(const popart::OperatorIdentifier &opid, const NeuronParams &params,
                   TileRange tiles, const popart::Op::Settings &settings)
      : TiledOp(opid, tiles, settings), params_(params) {}

  std::unique_ptr<popart::Op> clone() const final {
    return std::make_unique<NeuronStepGradOp>(*this);
  }

  // Shaped like d, the one [B, N] input that is always there: grad_z, grad_v
  // and grad_a may be missing (no gradient reached that output).
  void setup() final {
    const popart::TensorInfo &state = inInfo(kD);
    for (popart::InIndex i : {kGradZ, kGradV, kGradA}) {
      if (hasInput(i) && inInfo(i) != state) {
        throw popart::error("ipu_snn NeuronStepGrad: gradient input {} must match d, {}; got {}",
                            i, state, inInfo(i));
      }
    }
    for (popart::OutIndex o : {kGradCurrent, kGradVPrev, kGradAPrev}) outInfo(o) = state;
  }

  // Which forward tensor each input is: gradients of the outputs z, v_new and
  // a_new; the saved bits and d (outputs); the decays (inputs).
  const std::vector<popart::GradInOutMapper> &gradInputInfo() const final {
    static const std::vector<popart::GradInOutMapper> info = {
        {kGradZ, NeuronStepOp::kZ, popart::GradOpInType::GradOut},
        {kGradV, NeuronStepOp::kVNew, popart::GradOpInType::GradOut},
        {kGradA, NeuronStepOp::kANew, popart::GradOpInType::GradOut},
        {kBits, NeuronStepOp::kBits, popart::GradOpInType::Out},
        {kD, NeuronStepOp::kD, popart::GradOpInType::Out},
        {kBeta, NeuronStepOp::kBeta, popart::GradOpInType::In},
        {kRho, NeuronStepOp::kRho, popart::GradOpInType::In}};
    return info;
  }

  // grad_current, grad_v_prev, grad_a_prev are the gradients of the inputs
  // current, v_prev, a_prev.
  const std::map<int, int> &gradOutToNonGradIn() const final {
    static const std::map<int, int> info = {{kGradCurrent, NeuronStepOp::kCurrent},
                                            {kGradVPrev, NeuronStepOp::kVPrev},
                                            {kGradAPrev, NeuronStepOp::kAPrev}};
    return info;
  }

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    TiledOp::appendOutlineAttributes(os);
    appendNeuronParams(os, params_);
  }

  const NeuronParams &params() const { return params_; }

private:
  NeuronParams params_;
};

std::vector<std::unique_ptr<popart::Op>> NeuronStepOp::getGradOps() {
  std::vector<std::unique_ptr<popart::Op>> ops;
  ops.emplace_back(std::make_unique<NeuronStepGradOp>(*this));
  return ops;
}

// ------------------------------------------------------------ registration --

const popart::OpDefinition::DataTypes kFloatTypes = {popart::DataType::FLOAT16,
                                                     popart::DataType::FLOAT};
const popart::OpDefinition::DataTypes kByteTypes = {popart::DataType::UINT8};

const popart::OpDefinition::Attributes kNeuronAttributes = {
    {"kind", {"*"}},      {"threshold", {"*"}}, {"adapt_strength", {"*"}},
    {"reset", {"*"}},     {"surrogate", {"*"}}, {"scale", {"*"}},
    {"tile_begin", {"*"}}, {"tile_end", {"*"}}};

const popart::OpDefinition kNeuronStepDef(
    {popart::OpDefinition::Inputs({{"current", kFloatTypes},
                                   {"v_prev", kFloatTypes},
                                   {"a_prev", kFloatTypes},
                                   {"beta", kFloatTypes},
                                   {"rho", kFloatTypes}}),
     popart::OpDefinition::Outputs({{"v_new", kFloatTypes},
                                    {"a_new", kFloatTypes},
                                    {"z", kFloatTypes},
                                    {"d", kFloatTypes},
                                    {"bits", kByteTypes}}),
     kNeuronAttributes});

const popart::OpDefinition kNeuronStepGradDef(
    {popart::OpDefinition::Inputs({{"grad_z", kFloatTypes},
                                   {"grad_v", kFloatTypes},
                                   {"grad_a", kFloatTypes},
                                   {"bits", kByteTypes},
                                   {"d", kFloatTypes},
                                   {"beta", kFloatTypes},
                                   {"rho", kFloatTypes}}),
     popart::OpDefinition::Outputs({{"grad_current", kFloatTypes},
                                    {"grad_v_prev", kFloatTypes},
                                    {"grad_a_prev", kFloatTypes}}),
     kNeuronAttributes});

popart::OpCreator<NeuronStepOp> neuronStepCreator(
    popart::OpDefinitions({{kNeuronStep, kNeuronStepDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      return std::make_unique<NeuronStepOp>(info.opid, readNeuronParams(info),
                                            readTileRange(info), info.settings);
    },
    true);

popart::OpCreator<NeuronStepGradOp> neuronStepGradCreator(
    popart::OpDefinitions({{kNeuronStepGrad, kNeuronStepGradDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      return std::make_unique<NeuronStepGradOp>(info.opid, readNeuronParams(info),
                                                readTileRange(info), info.settings);
    },
    true);

// ------------------------------------------------------------ Poplar lowering --

// The fields every neuron vertex has: its column range and the step's kind.
void setNeuronFields(poplar::Graph &g, poplar::VertexRef v, const NeuronParams &p,
                     const tiling::Range &columns) {
  g.setInitialValue(v["adaptStrength"], p.adaptStrength);
  g.setInitialValue(v["reset"], static_cast<unsigned>(p.reset));
  g.setInitialValue(v["adaptive"], static_cast<unsigned>(p.adaptive ? 1 : 0));
  g.setInitialValue(v["colBegin"], static_cast<unsigned>(columns.begin));
  g.setInitialValue(v["colEnd"], static_cast<unsigned>(columns.end));
}

// Columns [range) of a [N] decay vector.
poplar::Tensor decayBlock(const poplar::Tensor &t, const tiling::Range &range) {
  return t.slice(range.begin, range.end, 0);
}

class NeuronStepOpx : public popart::popx::Opx {
public:
  NeuronStepOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<NeuronStepOp>(op, {kNeuronStep});
    addCodelets(graph());
  }

  // Every input is laid out column-split, so state, current and decays of a
  // neuron meet on its tile: [B, N] inputs by column, [N] decays likewise.
  popart::popx::InputCreatorType getInputCreatorType(popart::InIndex) const override {
    return popart::popx::InputCreatorType::CanCreate;
  }

  poplar::Tensor createInput(popart::InIndex index,
                             const poplar::DebugNameAndId &dnai) const override {
    const popart::Shape &shape = inShape(index);
    const std::size_t neurons = static_cast<std::size_t>(shape.back());
    const ColumnSplit split = splitColumns(graph(), getOp<NeuronStepOp>().tiles(), neurons);
    std::vector<std::size_t> prefix;
    if (shape.size() == 2) prefix.push_back(static_cast<std::size_t>(shape[0]));
    return addColumnMapped(graph(), floatType(inInfo(index).dataType()), prefix, split,
                           poplar::DebugContext(dnai, "neuronState"));
  }

  std::set<popart::TensorId> mustExistBeforeCreate(popart::InIndex) const override {
    return {};
  }

  bool createsEquiv(int, const popart::popx::Opx *, int) const override { return false; }

  void grow(poplar::program::Sequence &prog) const final {
    const NeuronStepOp &op = getOp<NeuronStepOp>();
    const NeuronParams &p = op.params();
    poplar::Graph &g = graph();
    const poplar::Tensor current = getInTensor(NeuronStepOp::kCurrent);
    const poplar::Type type = current.elementType();
    const std::size_t batch = current.dim(0), neurons = current.dim(1);
    const ColumnSplit split = splitColumns(g, op.tiles(), neurons);

    poplar::Tensor vNew = addColumnMapped(g, type, {batch}, split, debugContext("vNew"));
    poplar::Tensor aNew = addColumnMapped(g, type, {batch}, split, debugContext("aNew"));
    poplar::Tensor z = addColumnMapped(g, type, {batch}, split, debugContext("z"));
    poplar::Tensor d = addColumnMapped(g, type, {batch}, split, debugContext("d"));
    const poplar::Tensor beta = getInTensor(NeuronStepOp::kBeta);
    const poplar::Tensor rho = getInTensor(NeuronStepOp::kRho);

    poplar::ComputeSet step = g.addComputeSet(debugContext("neuronForward"));
    const std::string name = vertexName("NeuronForward", type);
    for (std::size_t j = 0; j < split.columns.size(); ++j) {
      const tiling::Range &cols = split.columns[j];
      poplar::VertexRef v = g.addVertex(step, name);
      g.connect(v["current"], columnBlock(current, cols));
      g.connect(v["vPrev"], columnBlock(getInTensor(NeuronStepOp::kVPrev), cols));
      g.connect(v["aPrev"], columnBlock(getInTensor(NeuronStepOp::kAPrev), cols));
      g.connect(v["beta"], decayBlock(beta, cols));
      g.connect(v["rho"], decayBlock(rho, cols));
      g.connect(v["vNew"], columnBlock(vNew, cols));
      g.connect(v["aNew"], columnBlock(aNew, cols));
      g.connect(v["z"], columnBlock(z, cols));
      g.connect(v["d"], columnBlock(d, cols));
      g.setInitialValue(v["threshold"], p.threshold);
      g.setInitialValue(v["scale"], p.scale);
      g.setInitialValue(v["surrogate"], static_cast<unsigned>(p.surrogate));
      setNeuronFields(g, v, p, cols);
      g.setTileMapping(v, split.tile(j));
      g.setPerfEstimate(v, perWorkerCycles(g, 12 * batch * cols.size()));
    }
    prog.add(poplar::program::Execute(step, debugContext("neuronForward")));

    // Pack the spikes: each byte on, and written by, the tile of its first
    // neuron; it reads the few spikes of the byte owned by the next tile.
    std::vector<poplar::Tensor> byteParts;
    std::vector<std::size_t> byteOwners;
    for (std::size_t j = 0; j < split.columns.size(); ++j) {
      const tiling::Range bytes = tiling::ownedBytes(split.columns[j]);
      if (bytes.empty()) continue;
      poplar::Tensor part = g.addVariable(poplar::UNSIGNED_CHAR, {batch, bytes.size()},
                                          debugContext("bits"));
      g.setTileMapping(part, split.tile(j));
      byteParts.push_back(part);
      byteOwners.push_back(j);
    }
    poplar::Tensor bits = poplar::concat(byteParts, 1);
    poplar::ComputeSet pack = g.addComputeSet(debugContext("packSpikes"));
    const std::string packName = vertexName("PackSpikes", type);
    for (std::size_t j : byteOwners) {
      const tiling::Range bytes = tiling::ownedBytes(split.columns[j]);
      const tiling::Range cols{8 * bytes.begin, std::min(8 * bytes.end, neurons)};
      poplar::VertexRef v = g.addVertex(pack, packName);
      g.connect(v["z"], columnBlock(z, cols));
      g.connect(v["bits"], columnBlock(bits, bytes));
      g.setInitialValue(v["numNeurons"], static_cast<unsigned>(cols.size()));
      g.setTileMapping(v, split.tile(j));
      g.setPerfEstimate(v, perWorkerCycles(g, 4 * batch * cols.size()));
    }
    prog.add(poplar::program::Execute(pack, debugContext("packSpikes")));

    setOutTensor(NeuronStepOp::kVNew, vNew);
    setOutTensor(NeuronStepOp::kANew, aNew);
    setOutTensor(NeuronStepOp::kZ, z);
    setOutTensor(NeuronStepOp::kD, d);
    setOutTensor(NeuronStepOp::kBits, bits);
  }
};

class NeuronStepGradOpx : public popart::popx::Opx {
public:
  NeuronStepGradOpx(popart::Op *op, popart::popx::Devicex *devicex)
      : popart::popx::Opx(op, devicex) {
    verifyOp<NeuronStepGradOp>(op, {kNeuronStepGrad});
    addCodelets(graph());
  }

  void grow(poplar::program::Sequence &prog) const final {
    const NeuronStepGradOp &op = getOp<NeuronStepGradOp>();
    const NeuronParams &p = op.params();
    poplar::Graph &g = graph();
    const poplar::Tensor d = getInTensor(NeuronStepGradOp::kD);
    const poplar::Tensor bits = getInTensor(NeuronStepGradOp::kBits);
    const poplar::Type type = d.elementType();
    const std::size_t batch = d.dim(0), neurons = d.dim(1);
    const ColumnSplit split = splitColumns(g, op.tiles(), neurons);
    const poplar::Tensor gradZ = gradientOrZero(NeuronStepGradOp::kGradZ, type, batch, neurons, split);
    const poplar::Tensor gradV = gradientOrZero(NeuronStepGradOp::kGradV, type, batch, neurons, split);
    const poplar::Tensor gradA = gradientOrZero(NeuronStepGradOp::kGradA, type, batch, neurons, split);

    poplar::Tensor gradCurrent =
        addColumnMapped(g, type, {batch}, split, debugContext("gradCurrent"));
    poplar::Tensor gradVPrev = addColumnMapped(g, type, {batch}, split, debugContext("gradVPrev"));
    poplar::Tensor gradAPrev = addColumnMapped(g, type, {batch}, split, debugContext("gradAPrev"));

    // Each worker re-packs the spikes of its rows into its own slice of ownBits.
    const unsigned workers = workersPerTile(g);
    const unsigned rowsPerWorker = core::worker_span_bound<unsigned>(
        static_cast<unsigned>(batch), workers, wordItems(type));
    poplar::ComputeSet cs = g.addComputeSet(debugContext("neuronBackward"));
    const std::string name = vertexName("NeuronBackward", type);
    for (std::size_t j = 0; j < split.columns.size(); ++j) {
      const tiling::Range &cols = split.columns[j];
      const unsigned tile = split.tile(j);
      const unsigned ownSlice =
          core::packed_slice_bytes<unsigned>(rowsPerWorker, static_cast<unsigned>(cols.size()));
      // The packed bytes that overlap the tile's neurons, from the byte of its
      // first neuron (perhaps written by the previous tile) on.
      const tiling::Range bytes{cols.begin / 8, (cols.end + 7) / 8};
      poplar::Tensor ownBits = g.addVariable(poplar::UNSIGNED_CHAR,
                                             {std::size_t(workers) * ownSlice},
                                             debugContext("ownBits"));
      g.setTileMapping(ownBits, tile);
      poplar::VertexRef v = g.addVertex(cs, name);
      g.connect(v["gradZ"], columnBlock(gradZ, cols));
      g.connect(v["gradV"], columnBlock(gradV, cols));
      g.connect(v["gradA"], columnBlock(gradA, cols));
      g.connect(v["bits"], columnBlock(bits, bytes));
      g.connect(v["d"], columnBlock(d, cols));
      g.connect(v["beta"], decayBlock(getInTensor(NeuronStepGradOp::kBeta), cols));
      g.connect(v["rho"], decayBlock(getInTensor(NeuronStepGradOp::kRho), cols));
      g.connect(v["gradCurrent"], columnBlock(gradCurrent, cols));
      g.connect(v["gradVPrev"], columnBlock(gradVPrev, cols));
      g.connect(v["gradAPrev"], columnBlock(gradAPrev, cols));
      g.connect(v["ownBits"], ownBits);
      setNeuronFields(g, v, p, cols);
      g.setInitialValue(v["ownSlice"], ownSlice);
      g.setTileMapping(v, tile);
      g.setPerfEstimate(v, perWorkerCycles(g, 16 * batch * cols.size()));
    }
    prog.add(poplar::program::Execute(cs, debugContext("neuronBackward")));
    setOutTensor(NeuronStepGradOp::kGradCurrent, gradCurrent);
    setOutTensor(NeuronStepGradOp::kGradVPrev, gradVPrev);
    setOutTensor(NeuronStepGradOp::kGradAPrev, gradAPrev);
  }

private:
  // The gradient input `index`, or zeros [batch, neurons] where PopART left it
  // unconnected: one scalar variable set to 0 and broadcast, as PopART's own
  // LSTMGradOpx does for a missing output gradient (graphcore/popart
  // willow/src/popx/op/lstmx.cpp, getCellStateGrad).
  poplar::Tensor gradientOrZero(popart::InIndex index, const poplar::Type &type,
                                std::size_t batch, std::size_t neurons,
                                const ColumnSplit &split) const {
    if (hasInput(index)) return getInTensor(index);
    poplar::Tensor zero = getScalarVariable(type, "ipu_snn/zeroGradient");
    graph().setTileMapping(zero, split.tile(0));
    graph().setInitialValue(zero, 0);
    return zero.expand({0, 0})
        .broadcast(static_cast<unsigned>(batch), 0)
        .broadcast(static_cast<unsigned>(neurons), 1);
  }
};

popart::popx::OpxCreator<NeuronStepOpx> neuronStepOpxCreator(kNeuronStep);
popart::popx::OpxCreator<NeuronStepGradOpx> neuronStepGradOpxCreator(kNeuronStepGrad);

}  // namespace
