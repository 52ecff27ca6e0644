// The PopART network op: every spiking layer over the whole sequence in one op
// (Poplar SDK 3.x). The Opx and GradOpx are thin wrappers around
// ipu_snn::network::buildNetwork (network_graph.cpp), which builds the
// tensors, vertices, tile mappings and programs.
//
// Built into libipu_snn_ops.so by `make -C custom_ops ipu`; PopTorch reaches it
// after ctypes.cdll.LoadLibrary(...) through (ipu_snn/ipu/custom_ops.py)
//   poptorch.custom_op([bits, *params], "Network", "ipu_snn", 1,
//                      example_outputs=[output, *carried], attributes={...})
//
// Network (inputs -> outputs), B samples, T steps, float32:
//   bits uint8 [B, T, ceil(n_in / 8)]; per spiking layer l: weight_in
//   [n_in, n], bias [n], beta [n] (clamped), for recurrent layers
//   weight_rec [n, n], for a learned threshold threshold [n], for ALIF and
//   CUBA rho [n] (clamped; no gradient); then the
//   leaky-integrator readout's weight
//   [n_last, n_out], bias [n_out], beta [n_out] (clamped)
//   -> output [T, B, n_out] (the readout's membrane trace), each spiking
//      layer's spike counts [B, n], then the carried state
//      (network::carriedShapes).
// NetworkGrad (its grad op, never called directly):
//   grad_output, bits, the parameters, the carried state
//   -> per spiking layer grad_weight_in, grad_bias, [grad_beta (learn_decay)],
//      [grad_weight_rec], [grad_threshold (learn_threshold)]; the readout's
//      grad_weight, grad_bias, grad_beta.
//
// State between the two. The forward program leaves the tapes, local
// checkpoints and last state in the graph's tensors; the op outputs them and
// the grad op takes them back as inputs (GradOpInType::Out, as PopART's own
// grad ops take saved forward outputs, e.g. BatchNormGradOp's saved mean and
// variance, graphcore/popart willow/src/op/batchnorm.cpp:185-191). Neither Opx
// copies anything: the Opx lays out the op's inputs itself (createInput, the
// layout buildNetwork uses), its forward build uses them and creates the
// carried state, and the GradOpx's backward build uses the inputs, the
// parameters and the carried state as PopART hands them over (getInTensor),
// creating only its scratch and the gradients. Off-chip checkpoints live in
// remote buffers, which are not tensors: the forward Opx creates them in the
// lowering's registry (ExchangeBundle::createRemoteBuffer, as
// RemoteStoreOpx/RemoteLoadOpx do, graphcore/popart
// willow/src/popx/op/exchange/exchangex.cpp:76-87, 458-474), under ids derived
// from the forward op's id, and the GradOpx looks the same ids up
// (ExchangeBundle::getRemoteBuffer) so that its Load copies read what the
// forward's Store copies wrote.
//
// Attributes (lists one entry per spiking layer): sizes, recurrent,
// thresholds, resets, surrogates, scales, listed (the listed backward,
// LayerSpec::listed); readout (n_out), samples_per_pass;
// tape_slots, local_slots, offchip_slots; actions
// (6 ints per action: kind, n0, n1, tape, offchip, slot, as
// ipu_snn.ipu.interpreter.step_actions writes them).
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <popart/error.hpp>
#include <popart/ir.hpp>
#include <popart/op.hpp>
#include <popart/opmanager.hpp>
#include <popart/opserialiser.hpp>
#include <popart/popx/devicex.hpp>
#include <popart/popx/exchangebundle.hpp>
#include <popart/popx/irlowering.hpp>
#include <popart/popx/opx.hpp>
#include <popart/popx/opxmanager.hpp>
#include <popart/region.hpp>
#include <popart/tensorinfo.hpp>

#include <poplar/Graph.hpp>
#include <poplar/Program.hpp>

#include "network_graph.hpp"

// Where `make ipu` puts the compiled codelets; the Makefile passes the real path.
#ifndef IPU_SNN_CODELETS_PATH
#define IPU_SNN_CODELETS_PATH "ipu_snn_codelets.gp"
#endif

namespace {

namespace network = ipu_snn::network;

const popart::OperatorIdentifier kNetwork = {"ipu_snn", "Network", 1, {7, -1}, -1};
const popart::OperatorIdentifier kNetworkGrad = {"ipu_snn", "NetworkGrad", 1, {9, -1}, -1};

// Remote buffers of one op pair: ids above any PopART assigns itself
// (RemoteSetup numbers its own from 0), one block per forward op.
constexpr popart::RemoteBufferId kRemoteBufferBase = popart::RemoteBufferId(1) << 40;
constexpr popart::RemoteBufferId kRemoteBuffersPerOp = popart::RemoteBufferId(1) << 20;

popart::RemoteBufferId remoteBufferId(popart::OpId forward, std::size_t k) {
  return kRemoteBufferBase + popart::RemoteBufferId(forward) * kRemoteBuffersPerOp +
         popart::RemoteBufferId(k);
}

// ------------------------------------------------------------- attributes --

// A per-layer list attribute, checked for one entry per layer.
template <typename List>
List perLayer(const popart::Attributes &a, const std::string &name, std::size_t n) {
  const List v = a.getAttribute<List>(name);
  if (v.size() != n) throw popart::error("ipu_snn Network: attribute {} needs {} entries, has {}", name, n, v.size());
  return v;
}

// The spec as the attributes give it; batch, steps and inputs come from the
// input shapes in setup().
network::NetworkSpec readSpec(const popart::OpCreatorInfo &info) {
  const popart::Attributes &a = info.attributes;
  const auto sizes = a.getAttribute<popart::Attributes::Ints>("sizes");
  const std::size_t n = sizes.size();
  if (n == 0) throw popart::error("ipu_snn Network: attribute sizes names no layer");
  using Ints = popart::Attributes::Ints;
  using Floats = popart::Attributes::Floats;
  const Ints recurrent = perLayer<Ints>(a, "recurrent", n);
  const Ints resets = perLayer<Ints>(a, "resets", n);
  const Ints surrogates = perLayer<Ints>(a, "surrogates", n);
  const Floats thresholds = perLayer<Floats>(a, "thresholds", n);
  const Floats scales = perLayer<Floats>(a, "scales", n);
  const Ints listed = perLayer<Ints>(a, "listed", n);
  const Ints learnDecay = perLayer<Ints>(a, "learn_decay", n);
  const Ints learnThreshold = perLayer<Ints>(a, "learn_threshold", n);
  const Ints kinds = perLayer<Ints>(a, "kinds", n);
  const Floats adaptStrengths = perLayer<Floats>(a, "adapt_strengths", n);
  network::NetworkSpec spec;
  for (std::size_t l = 0; l < n; ++l) {
    network::LayerSpec layer;
    layer.size = unsigned(sizes[l]);
    layer.recurrent = recurrent[l] != 0;
    layer.threshold = thresholds[l];
    layer.reset = unsigned(resets[l]);
    layer.surrogate = unsigned(surrogates[l]);
    layer.scale = scales[l];
    layer.listed = listed[l] != 0;
    layer.learnDecay = learnDecay[l] != 0;
    layer.learnThreshold = learnThreshold[l] != 0;
    layer.kind = unsigned(kinds[l]);
    layer.adaptStrength = adaptStrengths[l];
    spec.layers.push_back(layer);
  }
  spec.readout = unsigned(a.getAttribute<popart::Attributes::Int>("readout"));
  spec.samplesPerPass = unsigned(a.getAttribute<popart::Attributes::Int>("samples_per_pass", 0));
  spec.tapeSlots = unsigned(a.getAttribute<popart::Attributes::Int>("tape_slots", 1));
  spec.localSlots = unsigned(a.getAttribute<popart::Attributes::Int>("local_slots", 0));
  spec.offchipSlots = unsigned(a.getAttribute<popart::Attributes::Int>("offchip_slots", 0));
  const auto flat = a.getAttribute<popart::Attributes::Ints>("actions");
  if (flat.empty() || flat.size() % 6 != 0)
    throw popart::error("ipu_snn Network: attribute actions needs 6 ints per action, has {}", flat.size());
  for (std::size_t i = 0; i < flat.size(); i += 6) {
    network::Action act{network::ActionKind(flat[i])};
    act.n0 = unsigned(flat[i + 1]);
    act.n1 = unsigned(flat[i + 2]);
    act.tape = flat[i + 3] != 0;
    act.offchip = flat[i + 4] != 0;
    act.slot = unsigned(flat[i + 5]);
    spec.actions.push_back(act);
  }
  return spec;
}

void appendSpec(popart::OpSerialiserBase &os, const network::NetworkSpec &s) {
  std::vector<int64_t> sizes, recurrent, resets, surrogates, listed, learnDecay, learnThreshold, kinds, actions;
  std::vector<float> thresholds, scales, adaptStrengths;
  for (const network::LayerSpec &l : s.layers) {
    sizes.push_back(l.size);
    recurrent.push_back(l.recurrent);
    resets.push_back(l.reset);
    surrogates.push_back(l.surrogate);
    thresholds.push_back(l.threshold);
    scales.push_back(l.scale);
    listed.push_back(l.listed);
    learnDecay.push_back(l.learnDecay);
    learnThreshold.push_back(l.learnThreshold);
    kinds.push_back(l.kind);
    adaptStrengths.push_back(l.adaptStrength);
  }
  for (const network::Action &a : s.actions)
    actions.insert(actions.end(), {int64_t(a.kind), a.n0, a.n1, a.tape, a.offchip, a.slot});
  os.appendAttribute("sizes", sizes);
  os.appendAttribute("recurrent", recurrent);
  os.appendAttribute("resets", resets);
  os.appendAttribute("surrogates", surrogates);
  os.appendAttribute("thresholds", thresholds);
  os.appendAttribute("scales", scales);
  os.appendAttribute("listed", listed);
  os.appendAttribute("learn_decay", learnDecay);
  os.appendAttribute("learn_threshold", learnThreshold);
  os.appendAttribute("kinds", kinds);
  os.appendAttribute("adapt_strengths", adaptStrengths);
  os.appendAttribute("readout", int64_t(s.readout));
  os.appendAttribute("samples_per_pass", int64_t(s.samplesPerPass));
  os.appendAttribute("tape_slots", int64_t(s.tapeSlots));
  os.appendAttribute("local_slots", int64_t(s.localSlots));
  os.appendAttribute("offchip_slots", int64_t(s.offchipSlots));
  os.appendAttribute("actions", actions);
}

// Parameter inputs, from index 1 on: per spiking layer weight_in, bias, beta,
// [weight_rec]; then the readout's weight, bias, beta.
std::size_t numParams(const network::NetworkSpec &s) { return network::inputCount(s) - 1; }

popart::Shape toShape(const std::vector<std::size_t> &dims) {
  return popart::Shape(dims.begin(), dims.end());
}

// ------------------------------------------------------------------ IR ops --

// What the op and its grad op share: the spec, part of their outline identity.
// One op per model: nothing to outline, and the grad op reads the op's remote
// buffers.
class SpecOp : public popart::Op {
public:
  SpecOp(const popart::OperatorIdentifier &opid, network::NetworkSpec spec, const popart::Op::Settings &settings)
      : popart::Op(opid, settings), spec_(std::move(spec)) {}

  void appendOutlineAttributes(popart::OpSerialiserBase &os) const override {
    popart::Op::appendOutlineAttributes(os);
    appendSpec(os, spec_);
  }
  bool isOutlineable() const override { return false; }
  float getSubgraphValue() const override { return getHighSubgraphValue(); }

  const network::NetworkSpec &spec() const { return spec_; }

protected:
  network::NetworkSpec spec_;
};

class NetworkOp : public SpecOp {
public:
  NetworkOp(const popart::OperatorIdentifier &opid, network::NetworkSpec spec,
            const popart::Op::Settings &settings)
      : SpecOp(opid, std::move(spec), settings) {}

  std::unique_ptr<popart::Op> clone() const final { return std::make_unique<NetworkOp>(*this); }

  // The sizes the attributes leave open come from the inputs; the outputs'
  // shapes from the spec (network::carriedShapes).
  void setup() final {
    const popart::Shape &bits = inShape(0);
    if (inInfo(0).dataType() != popart::DataType::UINT8 || bits.size() != 3)
      throw popart::error("ipu_snn Network: input 0 must be packed bits uint8 [B, T, ceil(n / 8)], got {}", inInfo(0));
    if (inTensorCount() != 1 + numParams(spec_))
      throw popart::error("ipu_snn Network: {} inputs for {} layers; expected {}", inTensorCount(), spec_.layers.size(),
                          1 + numParams(spec_));
    spec_.batch = unsigned(bits[0]);
    spec_.steps = unsigned(bits[1]);
    spec_.inputs = unsigned(inShape(1)[0]);
    if ((spec_.inputs + 7) / 8 != unsigned(bits[2]))
      throw popart::error("ipu_snn Network: {} inputs need {} bytes per step, the bits have {}", spec_.inputs,
                          (spec_.inputs + 7) / 8, bits[2]);
    std::size_t i = 1;
    std::size_t nIn = spec_.inputs;
    for (const network::LayerSpec &l : spec_.layers) {
      std::vector<popart::Shape> expected = {{int64_t(nIn), l.size}, {l.size}, {l.size}};
      if (l.recurrent) expected.push_back({l.size, l.size});
      if (l.learnThreshold) expected.push_back({l.size});
      if (l.twoStates()) expected.push_back({l.size});  // rho
      for (std::size_t k = 0; k < expected.size(); ++k, ++i) {
        if (inShape(popart::InIndex(i)) != expected[k] || inInfo(popart::InIndex(i)).dataType() != popart::DataType::FLOAT)
          throw popart::error("ipu_snn Network: input {} must be float32 {}, got {}", i, expected[k], inInfo(popart::InIndex(i)));
      }
      nIn = l.size;
    }
    const std::vector<popart::Shape> readout = {{int64_t(nIn), spec_.readout}, {spec_.readout}, {spec_.readout}};
    for (std::size_t k = 0; k < 3; ++k, ++i) {
      if (inShape(popart::InIndex(i)) != readout[k] || inInfo(popart::InIndex(i)).dataType() != popart::DataType::FLOAT)
        throw popart::error("ipu_snn Network: input {} (the readout's) must be float32 {}, got {}", i, readout[k],
                            inInfo(popart::InIndex(i)));
    }
    outInfo(0) = popart::TensorInfo(popart::DataType::FLOAT, popart::Shape{spec_.steps, spec_.batch, spec_.readout});
    const std::size_t L = spec_.layers.size();
    for (std::size_t l = 0; l < L; ++l)
      outInfo(popart::OutIndex(1 + l)) =
          popart::TensorInfo(popart::DataType::FLOAT, popart::Shape{spec_.batch, spec_.layers[l].size});
    const auto shapes = network::carriedShapes(spec_);
    for (std::size_t k = 0; k < shapes.size(); ++k)
      outInfo(popart::OutIndex(1 + L + k)) = popart::TensorInfo(
          shapes[k].bits ? popart::DataType::UINT8 : popart::DataType::FLOAT, toShape(shapes[k].shape));
  }

  std::vector<std::unique_ptr<popart::Op>> getGradOps() final;
};

class NetworkGradOp : public SpecOp {
public:
  explicit NetworkGradOp(const NetworkOp &fwd) : SpecOp(kNetworkGrad, fwd.spec(), fwd.settings), forward_(fwd.id) {
    const std::size_t params = numParams(spec_);
    const std::size_t carried = network::carriedShapes(spec_).size();
    // grad_output, bits, the parameters, the carried state
    gradIn_.emplace_back(0, 0, popart::GradOpInType::GradOut);
    for (std::size_t i = 0; i <= params; ++i)
      gradIn_.emplace_back(popart::InIndex(1 + i), popart::InIndex(i), popart::GradOpInType::In);
    const std::size_t L = spec_.layers.size();
    for (std::size_t k = 0; k < carried; ++k)
      gradIn_.emplace_back(popart::InIndex(2 + params + k), popart::OutIndex(1 + L + k), popart::GradOpInType::Out);
    // one gradient per weight and bias, the readout's decay, and the spiking layers' learned decays and
    // thresholds
    std::size_t in = 1, out = 0;
    for (const network::LayerSpec &l : spec_.layers) {
      gradOut_[int(out++)] = int(in);                          // weight_in
      gradOut_[int(out++)] = int(in + 1);                      // bias
      if (l.learnDecay) gradOut_[int(out++)] = int(in + 2);    // beta
      if (l.recurrent) gradOut_[int(out++)] = int(in + 3);     // weight_rec
      if (l.learnThreshold) gradOut_[int(out++)] = int(in + (l.recurrent ? 4 : 3));  // threshold
      in += 3 + (l.recurrent ? 1 : 0) + (l.learnThreshold ? 1 : 0) + (l.twoStates() ? 1 : 0);  // rho: none
    }
    for (int k = 0; k < 3; ++k) gradOut_[int(out++)] = int(in) + k;  // the readout's weight, bias, beta
  }

  std::unique_ptr<popart::Op> clone() const final { return std::make_unique<NetworkGradOp>(*this); }

  void setup() final {
    for (const auto &[out, in] : gradOut_) outInfo(out) = inInfo(popart::InIndex(1 + in));
  }

  // The backward program writes the carried state it takes (a recomputation
  // rewrites the state, tapes and checkpoints in place), so the op says so, as
  // VarUpdateOp says it of the weight it updates.
  popart::view::Regions modifies(popart::InIndex index) const final {
    if (index >= popart::InIndex(1 + network::inputCount(spec_)))
      return {popart::view::Region::getFull(inShape(index))};
    return popart::Op::modifies(index);
  }

  const std::vector<popart::GradInOutMapper> &gradInputInfo() const final { return gradIn_; }
  const std::map<int, int> &gradOutToNonGradIn() const final { return gradOut_; }

  popart::OpId forward() const { return forward_; }

private:
  popart::OpId forward_;
  std::vector<popart::GradInOutMapper> gradIn_;
  std::map<int, int> gradOut_;
};

std::vector<std::unique_ptr<popart::Op>> NetworkOp::getGradOps() {
  std::vector<std::unique_ptr<popart::Op>> ops;
  ops.emplace_back(std::make_unique<NetworkGradOp>(*this));
  return ops;
}

// ------------------------------------------------------------ registration --

const popart::OpDefinition kNetworkDef(
    {popart::OpDefinition::Inputs({{"bits", {popart::DataType::UINT8}}, {"params", {popart::DataType::FLOAT}}}),
     popart::OpDefinition::Outputs({{"output", {popart::DataType::FLOAT}},
                                    {"spike_counts", {popart::DataType::FLOAT}},
                                    {"carried", {popart::DataType::FLOAT, popart::DataType::UINT8}}}),
     popart::OpDefinition::Attributes({{"sizes", {"*"}},
                                       {"recurrent", {"*"}},
                                       {"thresholds", {"*"}},
                                       {"resets", {"*"}},
                                       {"surrogates", {"*"}},
                                       {"scales", {"*"}},
                                       {"listed", {"*"}},
                                       {"learn_decay", {"*"}},
                                       {"learn_threshold", {"*"}},
                                       {"kinds", {"*"}},
                                       {"adapt_strengths", {"*"}},
                                       {"readout", {"*"}},
                                       {"samples_per_pass", {"*"}},
                                       {"tape_slots", {"*"}},
                                       {"local_slots", {"*"}},
                                       {"offchip_slots", {"*"}},
                                       {"actions", {"*"}}})});

popart::OpCreator<NetworkOp> networkCreator(
    popart::OpDefinitions({{kNetwork, kNetworkDef}}),
    [](const popart::OpCreatorInfo &info) -> std::unique_ptr<popart::Op> {
      return std::make_unique<NetworkOp>(info.opid, readSpec(info), info.settings);
    },
    true);

// ------------------------------------------------------------ Poplar lowering --

class NetworkOpxBase : public popart::popx::Opx {
public:
  NetworkOpxBase(popart::Op *op, popart::popx::Devicex *devicex) : popart::popx::Opx(op, devicex) {
    // As PopTorch's own custom ops load theirs (graphcore/poptorch
    // popart_compiler/source/custom_operations/FastGatherLastDim.cpp: each Opx
    // constructor calls graph().addCodelets).
    const char *env = std::getenv("IPU_SNN_CODELETS");
    graph().addCodelets(env != nullptr ? env : IPU_SNN_CODELETS_PATH);
  }

protected:
  // PopART's inputs from `first` on, `count` of them, as they are.
  std::vector<poplar::Tensor> opInputs(popart::InIndex first, std::size_t count) const {
    std::vector<poplar::Tensor> ts;
    for (std::size_t i = 0; i < count; ++i) ts.push_back(getInTensor(first + popart::InIndex(i)));
    return ts;
  }

  popart::popx::ExchangeBundle &bundle() const { return dv_p->lowering().getExchangeBundle(); }
};

class NetworkOpx : public NetworkOpxBase {
public:
  NetworkOpx(popart::Op *op, popart::popx::Devicex *devicex) : NetworkOpxBase(op, devicex) {
    verifyOp<NetworkOp>(op, {kNetwork});
  }

  // The op lays out every input itself (the bits and the parameters), on the
  // tiles its graph uses them, as GRUOpx and LSTMOpx lay out theirs.
  popart::popx::InputCreatorType getInputCreatorType(popart::InIndex) const final {
    return popart::popx::InputCreatorType::CanCreate;
  }

  poplar::Tensor createInput(popart::InIndex index, const poplar::DebugNameAndId &) const final {
    return network::createInput(graph(), getOp<NetworkOp>().spec(), std::size_t(index));
  }

  // A creator must also say what must exist before it creates (the lowering asks
  // every candidate; Opx's default throws): nothing, as GRUOpx answers.
  std::set<popart::TensorId> mustExistBeforeCreate(popart::InIndex) const final { return {}; }

  // Opx's default throws too; the op's layouts are its own, equal to no other Opx's.
  bool createsEquiv(int, const popart::popx::Opx *, int) const final { return false; }

  void grow(poplar::program::Sequence &prog) const final {
    const NetworkOp &op = getOp<NetworkOp>();
    const network::NetworkSpec &spec = op.spec();
    std::size_t k = 0;
    // The off-chip checkpoints' buffers, registered where the grad op finds them.
    auto remote = [&](const std::string &, const poplar::Tensor &row, std::size_t rows) {
      const popart::RemoteBufferId id = remoteBufferId(op.id, k++);
      op_p->getIr().setRemoteBufferInfo(
          id, popart::RemoteBufferInfo(
                  popart::TensorInfo(popart::DataType::FLOAT, popart::Shape{int64_t(row.numElements())}), rows));
      bundle().createRemoteBuffer(graph(), id, {row});
      return bundle().getRemoteBuffer(id).first;
    };
    network::NetworkTensors given;
    given.inputs = opInputs(0, network::inputCount(spec));
    network::NetworkGraph net = network::buildNetwork(graph(), spec, network::Pass::Forward, given, remote);
    prog.add(net.forward);
    setOutTensor(0, net.output);
    const std::size_t L = spec.layers.size();
    for (std::size_t l = 0; l < L; ++l) setOutTensor(popart::OutIndex(1 + l), net.layers[l].spikeCount);
    for (std::size_t i = 0; i < net.carried.size(); ++i) setOutTensor(popart::OutIndex(1 + L + i), net.carried[i]);
  }
};

class NetworkGradOpx : public NetworkOpxBase {
public:
  NetworkGradOpx(popart::Op *op, popart::popx::Devicex *devicex) : NetworkOpxBase(op, devicex) {
    verifyOp<NetworkGradOp>(op, {kNetworkGrad});
  }

  void grow(poplar::program::Sequence &prog) const final {
    const NetworkGradOp &op = getOp<NetworkGradOp>();
    const network::NetworkSpec &spec = op.spec();
    std::size_t k = 0;
    auto remote = [&](const std::string &name, const poplar::Tensor &, std::size_t) {
      const popart::RemoteBufferId id = remoteBufferId(op.forward(), k++);
      if (!bundle().hasRemoteBuffer(id))
        throw popart::error("ipu_snn NetworkGrad: the forward op registered no remote buffer {} ({})", id, name);
      return bundle().getRemoteBuffer(id).first;
    };
    // grad_output, bits, the parameters, the carried state (NetworkGradOp's inputs), used as they are
    const std::size_t n = network::inputCount(spec);
    network::NetworkTensors given;
    given.gradOutput = getInTensor(0);
    given.inputs = opInputs(1, n);
    given.carried = opInputs(popart::InIndex(1 + n), network::carriedShapes(spec).size());
    network::NetworkGraph net = network::buildNetwork(graph(), spec, network::Pass::Backward, given, remote);
    prog.add(net.backward);
    int out = 0;
    for (std::size_t l = 0; l < spec.layers.size(); ++l) {
      const network::LayerTensors &t = net.layers[l];
      setOutTensor(out++, t.gradWeightIn);
      setOutTensor(out++, t.gradBias);
      if (spec.layers[l].learnDecay) setOutTensor(out++, t.gradBeta);
      if (spec.layers[l].recurrent) setOutTensor(out++, t.gradWeightRec);
      if (spec.layers[l].learnThreshold) setOutTensor(out++, t.gradThreshold);
    }
    setOutTensor(out++, net.readout.gradWeight);
    setOutTensor(out++, net.readout.gradBias);
    setOutTensor(out++, net.readout.gradBeta);
  }
};

popart::popx::OpxCreator<NetworkOpx> networkOpxCreator(kNetwork);
popart::popx::OpxCreator<NetworkGradOpx> networkGradOpxCreator(kNetworkGrad);

}  // namespace
