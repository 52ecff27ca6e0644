// Test-only: a C interface (for ctypes) to the network op's graph
// (custom_ops/poplar/network_graph.cpp) built on the mock Poplar graph, and to
// the host interpreter that runs it. ipu_snn/ipu/interpreter.py builds and loads it.
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>
#include <string>

#include "HostGraph.hpp"
#include "Interpreter.hpp"
#include "network_graph.hpp"

namespace {
using ipu_snn::network::Action;
using ipu_snn::network::ActionKind;
using ipu_snn::network::LayerSpec;
using ipu_snn::network::NetworkGraph;
using ipu_snn::network::NetworkSpec;

// The two builds PopART makes of the network op, in one graph: the forward
// build (the op's Opx), then the backward build over the forward's tensors (its
// grad op's GradOpx), the inputs laid out by createInput as the Opx's are.
struct Handle {
  poplar::Graph graph;
  NetworkGraph net;  // the forward build
  NetworkGraph grad;  // the backward build
  std::map<std::string, poplar::Tensor> named;
  // per compute set, the bytes each tile receives from other tiles (each tensor once); filled on first use
  std::vector<std::map<unsigned, double>> received;
};
int fail(const std::exception &e, char *err, unsigned errLen) {
  std::snprintf(err, errLen, "%s", e.what());
  return 1;
}
const poplar::Tensor &tensor(Handle *h, const char *name) {
  auto found = h->named.find(name);
  if (found != h->named.end()) return found->second;
  // any variable, by its debug name
  const auto &g = poplar_mock::GraphData::of(h->graph);
  for (unsigned i = 0; i < g.vars.size(); ++i)
    if (g.vars[i].name == name) {
      poplar_mock::TensorData d{poplar_mock::TypeAccess::make(g.vars[i].type), g.vars[i].shape,
                                {poplar_mock::Region{i, 0, g.vars[i].n}}};
      return h->named.emplace(name, poplar_mock::TensorAccess::make(d)).first->second;
    }
  throw poplar_mock::Error(std::string("no tensor named ") + name);
}

NetworkSpec readSpec(const unsigned *spec, const float *scalars) {
  NetworkSpec s;
  s.batch = spec[0];
  s.steps = spec[1];
  s.inputs = spec[2];
  const unsigned layers = spec[3];
  s.tapeSlots = spec[4];
  s.localSlots = spec[5];
  s.offchipSlots = spec[6];
  const unsigned actions = spec[7];
  s.readout = spec[8];
  s.samplesPerPass = spec[9];
  const unsigned *p = spec + 10;
  for (unsigned l = 0; l < layers; ++l, p += 8) {
    LayerSpec ls;
    ls.size = p[0];
    ls.recurrent = p[1] != 0;
    ls.reset = p[2];
    ls.surrogate = p[3];
    ls.listed = p[4] != 0;
    ls.learnDecay = p[5] != 0;
    ls.learnThreshold = p[6] != 0;
    ls.kind = p[7];
    ls.threshold = scalars[3 * l];
    ls.scale = scalars[3 * l + 1];
    ls.adaptStrength = scalars[3 * l + 2];
    s.layers.push_back(ls);
  }
  for (unsigned a = 0; a < actions; ++a, p += 6)
    s.actions.push_back(Action{ActionKind(p[0]), p[1], p[2], p[3] != 0, p[4] != 0, p[5]});
  return s;
}
}  // namespace

extern "C" {
// spec: batch, steps, inputs, layers, tapeSlots, localSlots, offchipSlots, actions,
// readout (n_out), samplesPerPass, then per layer (size, recurrent, reset, surrogate, listed, learnDecay,
// learnThreshold, kind), then per action
// (kind, n0, n1, tape, offchip, slot); scalars: per layer (threshold, scale, adaptStrength).
void *ipu_snn_net_build(const unsigned *spec, const float *scalars, unsigned tiles, unsigned bytesPerTile,
                        int holdsData, char *err, unsigned errLen) {
  try {
    const NetworkSpec s = readSpec(spec, scalars);
    auto *h = new Handle{poplar_mock::GraphData::makeGraph(tiles, bytesPerTile, holdsData != 0), {}, {}, {}, {}};
    ipu_snn::network::NetworkTensors given;
    for (std::size_t i = 0; i < ipu_snn::network::inputCount(s); ++i)
      given.inputs.push_back(ipu_snn::network::createInput(h->graph, s, i));
    // the off-chip checkpoints' buffers: made by the forward build, found by name by the backward one
    std::map<std::string, poplar::RemoteBuffer> remotes;
    h->net = ipu_snn::network::buildNetwork(
        h->graph, s, ipu_snn::network::Pass::Forward, given,
        [&](const std::string &name, const poplar::Tensor &row, std::size_t rows) {
          return remotes.emplace(name, h->graph.addRemoteBuffer(name, row.elementType(), row.numElements(), rows))
              .first->second;
        });
    given.carried = h->net.carried;
    h->grad = ipu_snn::network::buildNetwork(h->graph, s, ipu_snn::network::Pass::Backward, given,
                                             [&](const std::string &name, const poplar::Tensor &, std::size_t) {
                                               return remotes.at(name);
                                             });
    h->named["input_bits"] = h->net.inputBits;
    h->named["output"] = h->net.output;
    h->named["grad_output"] = h->grad.gradOutput;
    const auto &r = h->net.readout;
    const auto &gr = h->grad.readout;
    for (auto [name, t] : {std::pair{"readout_weight", r.weight}, {"readout_bias", r.bias}, {"readout_beta", r.beta},
                           {"grad_readout_weight", gr.gradWeight}, {"grad_readout_bias", gr.gradBias},
                           {"grad_readout_beta", gr.gradBeta}})
      h->named[name] = t;
    for (unsigned l = 0; l < s.layers.size(); ++l) {
      const auto &lt = h->net.layers[l];
      const auto &gl = h->grad.layers[l];
      const std::string i = "." + std::to_string(l);
      h->named["weight_in" + i] = lt.weightIn;
      h->named["bias" + i] = lt.bias;
      h->named["beta" + i] = lt.beta;
      h->named["grad_weight_in" + i] = gl.gradWeightIn;
      h->named["grad_bias" + i] = gl.gradBias;
      h->named["spike_count" + i] = lt.spikeCount;
      h->named["state_z" + i] = lt.state;
      if (s.layers[l].recurrent) {
        h->named["weight_rec" + i] = lt.weightRec;
        h->named["grad_weight_rec" + i] = gl.gradWeightRec;
      }
      if (s.layers[l].learnDecay) h->named["grad_beta" + i] = gl.gradBeta;
      if (s.layers[l].twoStates()) h->named["rho" + i] = lt.rho;
      if (s.layers[l].learnThreshold) {
        h->named["threshold" + i] = lt.threshold;
        h->named["grad_threshold" + i] = gl.gradThreshold;
      }
    }
    for (std::size_t k = 0; k < h->net.carried.size(); ++k) h->named["carried." + std::to_string(k)] = h->net.carried[k];
    return h;
  } catch (const std::exception &e) {
    fail(e, err, errLen);
    return nullptr;
  }
}
// The carried outputs' types and shapes of a spec (network::carriedShapes), 5 numbers each
// (bits 0/1, rank, up to 3 dims) into out[5 * max]; returns how many, or -1 (err set).
int ipu_snn_net_carried_shapes(const unsigned *spec, const float *scalars, std::uint64_t *out, unsigned max,
                               char *err, unsigned errLen) {
  try {
    const auto shapes = ipu_snn::network::carriedShapes(readSpec(spec, scalars));
    if (shapes.size() > max) throw std::length_error("more carried tensors than the buffer holds");
    for (std::size_t k = 0; k < shapes.size(); ++k) {
      std::uint64_t *row = out + 5 * k;
      std::fill(row, row + 5, 0);
      row[0] = shapes[k].bits;
      row[1] = shapes[k].shape.size();
      std::copy(shapes[k].shape.begin(), shapes[k].shape.end(), row + 2);
    }
    return int(shapes.size());
  } catch (const std::exception &e) {
    fail(e, err, errLen);
    return -1;
  }
}
int ipu_snn_net_write(void *handle, const char *name, const void *data, char *err, unsigned errLen) {
  try {
    Handle *h = static_cast<Handle *>(handle);
    poplar_mock::write(poplar_mock::GraphData::of(h->graph), tensor(h, name), data);
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, errLen);
  }
}
// Elements of a named tensor, or -1 (err set) when there is none.
long long ipu_snn_net_numel(void *handle, const char *name, char *err, unsigned errLen) {
  try {
    return static_cast<long long>(tensor(static_cast<Handle *>(handle), name).numElements());
  } catch (const std::exception &e) {
    fail(e, err, errLen);
    return -1;
  }
}
int ipu_snn_net_read(void *handle, const char *name, void *data, char *err, unsigned errLen) {
  try {
    Handle *h = static_cast<Handle *>(handle);
    poplar_mock::read(poplar_mock::GraphData::of(h->graph), tensor(h, name), data);
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, errLen);
  }
}
int ipu_snn_net_run(void *handle, int backward, char *err, unsigned errLen) {
  try {
    Handle *h = static_cast<Handle *>(handle);
    poplar_mock::run(poplar_mock::GraphData::of(h->graph), backward ? h->grad.backward : h->net.forward);
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, errLen);
  }
}
// Bytes of variables on each tile (out[numTiles]); returns the tile count.
unsigned ipu_snn_net_tile_bytes(void *handle, std::uint64_t *out) {
  Handle *h = static_cast<Handle *>(handle);
  const auto bytes = poplar_mock::GraphData::of(h->graph).tileBytes();
  std::memcpy(out, bytes.data(), bytes.size() * sizeof(std::uint64_t));
  return unsigned(bytes.size());
}
// Bytes of the op's parameters (weights, biases, decays) on each tile (out[numTiles]): what an
// optimizer's slots replicate beside them.
void ipu_snn_net_param_bytes(void *handle, std::uint64_t *out) {
  Handle *h = static_cast<Handle *>(handle);
  const auto &g = poplar_mock::GraphData::of(h->graph);
  std::fill(out, out + g.target.getNumTiles(), 0);
  auto endsWith = [](const std::string &s, const char *suffix) {
    const std::size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
  };
  for (const auto &v : g.vars) {
    if (!(endsWith(v.name, ".weightIn") || endsWith(v.name, ".weightRec") || endsWith(v.name, ".bias") ||
          endsWith(v.name, ".beta") || endsWith(v.name, ".threshold")))
      continue;
    for (const auto &m : v.mapping) out[m.tile] += (m.end - m.begin) * poplar_mock::typeBytes(v.type);
  }
}
// remote bytes, vertices, compute sets, variables, vertex runs, exchanged bytes, remote bytes moved
void ipu_snn_net_counts(void *handle, std::uint64_t *out) {
  Handle *h = static_cast<Handle *>(handle);
  auto &g = poplar_mock::GraphData::of(h->graph);
  const auto &s = poplar_mock::stats(g);
  const std::uint64_t values[] = {g.remoteBytes(), g.vertices.size(), g.computeSets.size(), g.vars.size(),
                                  s.vertexRuns,    s.exchangedBytes,  s.remoteBytes};
  std::memcpy(out, values, sizeof(values));
}
void ipu_snn_net_free(void *handle) { delete static_cast<Handle *>(handle); }

// What one run of a program costs, for the plan's time model, from the graph
// alone (a counting graph will do). Each vertex's work is its codelet's inner
// loop iterations (opsOf: spikes at `rate` of the neurons per step), a
// single-worker vertex's counted 6 times (one issue slot in 6). out =
// {compute set executions, the sum over them of the busiest tile's work, the
// sum of the busiest tile's bytes received from other tiles (each tensor once
// per tile and compute set; Copy programs too), exchange phases (compute sets,
// and each run of consecutive Copy programs), bytes copied to or from remote
// buffers}.
namespace {
struct TileIndex {  // each variable's mapping sorted, for the tiles of a region
  std::vector<std::vector<poplar_mock::Mapping>> sorted;
  explicit TileIndex(const poplar_mock::GraphData &g) {
    for (const auto &v : g.vars) {
      sorted.push_back(v.mapping);
      std::sort(sorted.back().begin(), sorted.back().end(),
                [](const auto &a, const auto &b) { return a.begin < b.begin; });
    }
  }
  // bytes of the tensor not on `tile`; a tensor of many pieces (a layer's bits, mapped per sample and
  // tile, which every consumer tile reads) has its bytes per tile summed once
  double offTile(const poplar_mock::GraphData &g, const poplar::Tensor &t, int tile) const {
    const auto *key = &poplar_mock::TensorAccess::data(t);
    const auto &regions = key->regions();
    std::size_t pieces = 0;  // at most this many pieces to visit
    for (const auto &r : regions) pieces += sorted[r.var].size();
    if (pieces <= 256) {
      double bytes = 0;
      visit(g, regions, [&](unsigned on, double b) { bytes += int(on) != tile ? b : 0.0; });
      return bytes;
    }
    auto found = perTile.find(key);
    if (found == perTile.end()) {
      std::pair<double, std::unordered_map<unsigned, double>> held{0.0, {}};
      visit(g, regions, [&](unsigned on, double b) {
        held.first += b;
        held.second[on] += b;
      });
      found = perTile.emplace(key, std::move(held)).first;
    }
    auto on = found->second.second.find(unsigned(tile));
    return found->second.first - (on == found->second.second.end() ? 0.0 : on->second);
  }
  // f(tile, bytes) for each piece of the regions on one tile
  void visit(const poplar_mock::GraphData &g, const std::vector<poplar_mock::Region> &regions,
             const std::function<void(unsigned, double)> &f) const {
    for (const auto &r : regions) {
      const auto &m = sorted[r.var];
      auto it = std::upper_bound(m.begin(), m.end(), r.begin, [](std::size_t x, const auto &e) { return x < e.begin; });
      if (it != m.begin()) --it;
      for (; it != m.end() && it->begin < r.end; ++it) {
        const std::size_t b = std::max(it->begin, r.begin), e = std::min(it->end, r.end);
        if (b < e) f(it->tile, double((e - b) * poplar_mock::typeBytes(g.vars[r.var].type)));
      }
    }
  }
  mutable std::unordered_map<const void *, std::pair<double, std::unordered_map<unsigned, double>>> perTile;
  int tileOf(const poplar::Tensor &t) const {
    const auto &r = poplar_mock::TensorAccess::data(t).regions().at(0);
    const auto &m = sorted[r.var];
    auto it = std::upper_bound(m.begin(), m.end(), r.begin, [](std::size_t x, const auto &e) { return x < e.begin; });
    return it == m.begin() ? -1 : int((--it)->tile);
  }
};
double elements(const poplar_mock::VertexRecord &v, const char *field) {
  return double(v.fields.at(field).numElements());
}
// Inner-loop iterations of one vertex's compute() (all workers together).
double opsOf(const poplar_mock::VertexRecord &v, double rate) {
  const std::string &t = v.type;
  auto value = [&](const char *name) { return v.values.at(name); };
  if (t.rfind("BitsMatmulForward", 0) == 0) {
    const double width = elements(v, "bias"), out = elements(v, "out"), batch = out / width;
    // bias, every byte scanned, a weight row added per spike
    return out + elements(v, "bits") + batch * rate * (value("numInputs") + value("numRec")) * width +
           (value("numRec") > 0 ? elements(v, "bitsRec") : 0.0);
  }
  if (t.rfind("BitsMatmulGradWeight", 0) == 0) {
    const double n = value("numInputs"), rows = elements(v, "gradWeight");
    const double batch = elements(v, "bits") / std::ceil(n / 8);
    return batch * std::ceil(n / 8) + rate * batch * rows;  // each sample's bytes walked, a row added per spike
  }
  if (t.rfind("DenseGradInput", 0) == 0) return elements(v, "weight") * elements(v, "gradOut") / (elements(v, "weight") / value("numInputs"));
  if (t.rfind("ListedGradInput", 0) == 0) {
    // a bit tested per partial element; a dot product only where the input's surrogate derivative is
    // non-zero, taken as `rate` of them (a bounded surrogate: about the neurons near their threshold)
    const double width = elements(v, "weight") / value("numInputs");
    return elements(v, "partial") * (1.0 + rate * width);
  }
  if (t.rfind("SumParts", 0) == 0 || t.rfind("ReduceSlices", 0) == 0) return elements(v, "parts");
  if (t.rfind("StepLoad", 0) == 0) return elements(v, "dst");
  if (t.rfind("StepStore", 0) == 0) return elements(v, "src");
  if (t.rfind("NeuronForward", 0) == 0) return 4 * elements(v, "current");
  if (t.rfind("NeuronBackward", 0) == 0) return 4 * elements(v, "gradZ") + elements(v, "bits");
  if (t.rfind("LeakyIntegrateBackward", 0) == 0) return 4 * elements(v, "gradOut");
  if (t.rfind("LeakyIntegrate", 0) == 0) return 2 * elements(v, "vNew");
  if (t.rfind("PackSpikes", 0) == 0) return elements(v, "z");
  if (t.rfind("AccumulateRows", 0) == 0) return elements(v, "x");
  if (t.rfind("AccumulateProducts", 0) == 0) return elements(v, "x");
  if (t.rfind("ThresholdGrad", 0) == 0) return 2 * elements(v, "gradV");
  if (t.rfind("ZeroFill", 0) == 0) return elements(v, "out");
  return 1.0;  // StepCount
}
}  // namespace

namespace {
const std::vector<std::map<unsigned, double>> &receivedPerComputeSet(Handle *h) {
  if (!h->received.empty()) return h->received;
  const auto &g = poplar_mock::GraphData::of(h->graph);
  const TileIndex index(g);
  h->received.resize(g.computeSets.size());
  // a tensor is received once per tile; one buffer for every compute set (freeing a large one per compute
  // set made malloc consolidate its free lists each time)
  std::vector<std::tuple<unsigned, const void *, const poplar::Tensor *>> fields;
  for (std::size_t cs = 0; cs < g.computeSets.size(); ++cs) {
    fields.clear();
    for (unsigned id : g.computeSets[cs]) {
      const auto &v = g.vertices[id];
      for (const auto &[name, t] : v.fields) fields.emplace_back(unsigned(v.tile), &poplar_mock::TensorAccess::data(t), &t);
    }
    std::sort(fields.begin(), fields.end(), [](const auto &a, const auto &b) {
      return std::tie(std::get<0>(a), std::get<1>(a)) < std::tie(std::get<0>(b), std::get<1>(b));
    });
    for (std::size_t i = 0; i < fields.size(); ++i) {
      const auto &[tile, data, t] = fields[i];
      if (i > 0 && std::get<0>(fields[i - 1]) == tile && std::get<1>(fields[i - 1]) == data) continue;
      h->received[cs][tile] += index.offTile(g, *t, int(tile));
    }
  }
  return h->received;
}
}  // namespace

// What a tile holds besides its variables, from the graph: received[t], the most bytes tile t receives
// from other tiles in one compute set (the exchange's landing buffers; each tensor once per compute
// set), and vertices[t], the vertices mapped to it (their state).
void ipu_snn_net_tile_overheads(void *handle, std::uint64_t *received, std::uint64_t *vertices) {
  Handle *h = static_cast<Handle *>(handle);
  const auto &g = poplar_mock::GraphData::of(h->graph);
  const unsigned tiles = g.target.getNumTiles();
  std::fill(received, received + tiles, 0);
  std::fill(vertices, vertices + tiles, 0);
  for (const auto &v : g.vertices) ++vertices[v.tile];
  for (const auto &in : receivedPerComputeSet(h))
    for (const auto &[t, b] : in) received[t] = std::max<std::uint64_t>(received[t], std::uint64_t(b));
}

void ipu_snn_net_cost(void *handle, int backward, double rate, double *out) {
  Handle *h = static_cast<Handle *>(handle);
  const auto &g = poplar_mock::GraphData::of(h->graph);
  const TileIndex index(g);
  // per compute set: busiest tile's work and received bytes
  const auto &receivedPerCs = receivedPerComputeSet(h);
  std::vector<std::pair<double, double>> perCs(g.computeSets.size(), {0.0, 0.0});
  for (std::size_t cs = 0; cs < g.computeSets.size(); ++cs) {
    std::map<unsigned, double> work;
    for (unsigned id : g.computeSets[cs]) {
      const auto &v = g.vertices[id];
      const bool single = v.type.rfind("Step", 0) == 0;
      work[unsigned(v.tile)] += (single ? 6.0 : 1.0) * opsOf(v, rate);
    }
    for (const auto &[t, w] : work) perCs[cs].first = std::max(perCs[cs].first, w);
    for (const auto &[t, b] : receivedPerCs[cs]) perCs[cs].second = std::max(perCs[cs].second, b);
  }
  // consecutive Copy programs form one exchange phase; its time is its busiest receiving tile's bytes
  double totals[5] = {0, 0, 0, 0, 0};
  std::function<void(const poplar_mock::ProgramNode &, double)> walk = [&](const poplar_mock::ProgramNode &n,
                                                                             double times) {
    switch (n.kind) {
      case poplar_mock::ProgramNode::SEQUENCE: {
        std::map<int, double> copied;
        auto flush = [&] {
          double most = 0;
          for (const auto &[t, b] : copied) most = std::max(most, b);
          totals[2] += times * most;
          copied.clear();
        };
        bool inCopies = false;
        for (const auto &c : n.children) {
          const bool copy = c->kind == poplar_mock::ProgramNode::COPY;
          if (copy && !inCopies) totals[3] += times;
          if (!copy && inCopies) flush();
          inCopies = copy;
          if (copy) {
            const int to = index.tileOf(c->dst);
            copied[to] += index.offTile(g, c->src, to);
          } else {
            walk(*c, times);
          }
        }
        flush();
        break;
      }
      case poplar_mock::ProgramNode::REPEAT:
        walk(*n.children.at(0), times * n.count);
        break;
      case poplar_mock::ProgramNode::EXECUTE:
        totals[0] += times;
        totals[1] += times * perCs[n.cs].first;
        totals[2] += times * perCs[n.cs].second;
        totals[3] += times;
        break;
      case poplar_mock::ProgramNode::COPY:  // a Copy on its own (not in a sequence)
        totals[2] += times * index.offTile(g, n.src, index.tileOf(n.dst));
        totals[3] += times;
        break;
      case poplar_mock::ProgramNode::TO_REMOTE: case poplar_mock::ProgramNode::FROM_REMOTE: {
        const auto &r = g.remotes.at(n.remote);
        totals[4] += times * double(r.numElements * poplar_mock::typeBytes(r.type));
        break;
      }
    }
  };
  walk(poplar_mock::ProgramAccess::node(backward ? h->grad.backward : h->net.forward), 1.0);
  std::memcpy(out, totals, sizeof(totals));
}

// The variables on one tile, largest first: "name bytes" lines into buf.
void ipu_snn_net_tile_vars(void *handle, unsigned tile, char *buf, unsigned len) {
  Handle *h = static_cast<Handle *>(handle);
  const auto &g = poplar_mock::GraphData::of(h->graph);
  std::vector<std::pair<std::uint64_t, std::string>> held;
  for (const auto &v : g.vars) {
    std::uint64_t bytes = 0;
    for (const auto &m : v.mapping)
      if (m.tile == tile) bytes += (m.end - m.begin) * poplar_mock::typeBytes(v.type);
    if (bytes) held.emplace_back(bytes, v.name);
  }
  std::sort(held.rbegin(), held.rend());
  std::string text;
  for (const auto &[bytes, name] : held) text += name + " " + std::to_string(bytes) + "\n";
  std::snprintf(buf, len, "%s", text.c_str());
}

// Every variable of the graph (both builds) with its bytes: "name bytes" lines into buf; returns the
// length the whole list needs (it is cut at len).
unsigned ipu_snn_net_vars(void *handle, char *buf, unsigned len) {
  Handle *h = static_cast<Handle *>(handle);
  std::string text;
  for (const auto &v : poplar_mock::GraphData::of(h->graph).vars)
    text += v.name + " " + std::to_string(v.n * poplar_mock::typeBytes(v.type)) + "\n";
  std::snprintf(buf, len, "%s", text.c_str());
  return unsigned(text.size() + 1);
}

// The interpreter's self-check: a graph with one fault (0: a vertex that reads
// its Output field, 1: a vertex field left unconnected, 2: a variable mapped to
// no tile, 3: none); returns 0 when it ran, 1 with the refusal in err.
int ipu_snn_mock_selfcheck(int fault, char *err, unsigned errLen) {
  try {
    poplar::Graph g = poplar_mock::GraphData::makeGraph(4, 624 * 1024, true);
    poplar::Tensor a = g.addVariable(poplar::FLOAT, {8}, {"a"});
    poplar::Tensor b = g.addVariable(poplar::FLOAT, {8}, {"b"});
    g.setTileMapping(a, 0);
    if (fault != 2) g.setTileMapping(b, 1);
    poplar::ComputeSet cs = g.addComputeSet({"check"});
    poplar::VertexRef v;
    if (fault == 0) {
      v = g.addVertex(cs, "poplar_mock::ReadsOutput");
      g.connect(v["in"], a);
      g.connect(v["out"], b);
    } else {
      v = g.addVertex(cs, "AccumulateRows<float>");
      g.connect(v["x"], a);
      if (fault != 1) g.connect(v["acc"], b);
      g.setInitialValue(v["rows"], 1);
    }
    g.setTileMapping(v, 1);
    poplar_mock::run(poplar_mock::GraphData::of(g), poplar::program::Execute(cs));
    return 0;
  } catch (const std::exception &e) {
    return fail(e, err, errLen);
  }
}
}
