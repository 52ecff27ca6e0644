// Test-only: the definitions behind the mock's Poplar declarations
// (poplar/*.hpp), recording into poplar_mock::GraphData. Compiled into the
// host interpreter only (ipu_snn/ipu/interpreter.py builds it).
#include "HostGraph.hpp"

#include <algorithm>
#include <numeric>

namespace poplar {
Type BOOL = poplar_mock::TypeAccess::make(poplar_mock::T_BOOL);
Type UNSIGNED_CHAR = poplar_mock::TypeAccess::make(poplar_mock::T_UCHAR);
Type INT = poplar_mock::TypeAccess::make(poplar_mock::T_INT);
Type UNSIGNED_INT = poplar_mock::TypeAccess::make(poplar_mock::T_UINT);
Type HALF = poplar_mock::TypeAccess::make(poplar_mock::T_HALF);
Type FLOAT = poplar_mock::TypeAccess::make(poplar_mock::T_FLOAT);
bool Type::operator==(const Type &o) const { return id_ == o.id_; }
bool Type::operator!=(const Type &o) const { return id_ != o.id_; }

SourceLocation SourceLocation::Current() { return SourceLocation(); }
DebugContext::DebugContext(SourceLocation) {}
DebugContext::DebugContext(const char *name, SourceLocation) : name_(name) {}
DebugContext::DebugContext(std::string name, SourceLocation) : name_(std::move(name)) {}
DebugContext::DebugContext(const DebugNameAndId &, std::string name, SourceLocation)
    : name_(std::move(name)) {}
OptionFlags::OptionFlags() {}

unsigned Target::getNumTiles() const { return tiles_; }
unsigned Target::getNumWorkerContexts() const { return 6; }
}  // namespace poplar

namespace poplar_mock {
using poplar::Tensor;

std::size_t typeBytes(int id) {
  static const std::size_t bytes[] = {1, 1, 4, 4, 2, 4};
  return bytes[id];
}
const char *typeName(int id) {
  static const char *names[] = {"bool", "unsigned char", "int", "unsigned int", "half", "float"};
  return names[id];
}
static std::size_t product(const std::vector<std::size_t> &s, std::size_t from = 0) {
  std::size_t p = 1;
  for (std::size_t i = from; i < s.size(); ++i) p *= s[i];
  return p;
}
std::size_t TensorData::numElements() const { return product(shape); }
const TensorData &TensorAccess::data(const Tensor &t) {
  if (!t.data_) throw Error("poplar_mock: use of an empty Tensor");
  return *t.data_;
}
Tensor TensorAccess::make(TensorData d) {
  Tensor t;
  t.data_ = std::make_shared<const TensorData>(std::move(d));
  return t;
}
// Elements [begin, end) of the flattened tensor, appended to out (merging runs).
static void appendRange(const std::vector<Region> &regions, const std::vector<std::size_t> &starts,
                        std::size_t begin, std::size_t end, std::vector<Region> &out) {
  std::size_t i = std::size_t(std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin());
  i = i == 0 ? 0 : i - 1;
  for (; i < regions.size(); ++i) {
    const Region &r = regions[i];
    const std::size_t at = starts[i], len = r.end - r.begin;
    if (at >= end) break;
    if (at + len > begin) {
      const std::size_t b = std::max(begin, at) - at, e = std::min(end, at + len) - at;
      Region piece{r.var, r.begin + b, r.begin + e};
      if (!out.empty() && out.back().var == piece.var && out.back().end == piece.begin)
        out.back().end = piece.end;
      else
        out.push_back(piece);
    }
  }
}

poplar::Graph GraphData::makeGraph(unsigned tiles, unsigned bytesPerTile, bool holdsData) {
  poplar::Graph g;
  auto d = std::make_shared<GraphData>();
  setTarget(d->target, tiles, bytesPerTile);
  d->holdsData = holdsData;
  dataOf(g) = d;
  return g;
}
GraphData &GraphData::of(const poplar::Graph &g) {
  if (!g.data_) throw Error("poplar_mock: a Graph not made by GraphData::makeGraph");
  return *g.data_;
}
poplar::ComputeSet GraphData::computeSet(unsigned id) {
  poplar::ComputeSet cs;
  cs.id_ = id;
  return cs;
}
poplar::VertexRef GraphData::vertex(unsigned id) {
  poplar::VertexRef v;
  v.id_ = id;
  return v;
}
poplar::FieldRef GraphData::field(unsigned vertex, const std::string &name) {
  poplar::FieldRef f;
  f.vertex_ = vertex;
  f.name_ = name;
  return f;
}
poplar::RemoteBuffer GraphData::remote(const GraphData *g, unsigned id) {
  poplar::RemoteBuffer b;
  b.graph_ = g;
  b.id_ = id;
  return b;
}
std::vector<std::uint64_t> GraphData::tileBytes() const {
  std::vector<std::uint64_t> bytes(target.getNumTiles(), 0);
  for (const Variable &v : vars)
    for (const Mapping &m : v.mapping) bytes[m.tile] += (m.end - m.begin) * typeBytes(v.type);
  return bytes;
}
std::uint64_t GraphData::remoteBytes() const {
  std::uint64_t total = 0;
  for (const RemoteRecord &r : remotes) total += r.numElements * r.repeats * typeBytes(r.type);
  return total;
}
void GraphData::checkMapped() const {
  for (const Variable &v : vars) {
    std::vector<Mapping> m = v.mapping;
    std::sort(m.begin(), m.end(), [](const Mapping &a, const Mapping &b) { return a.begin < b.begin; });
    std::size_t at = 0;
    for (const Mapping &r : m) {
      if (r.begin > at) break;
      at = std::max(at, r.end);
    }
    if (at < v.n)
      throw Error("poplar_mock: variable '" + v.name + "' has elements mapped to no tile (from " +
                  std::to_string(at) + " of " + std::to_string(v.n) + ")");
  }
}
}  // namespace poplar_mock

namespace poplar {
using poplar_mock::Error;
using poplar_mock::GraphData;
using poplar_mock::Region;
using poplar_mock::TensorAccess;
using poplar_mock::TensorData;
using poplar_mock::TypeAccess;

Tensor::Tensor() {}
std::size_t Tensor::dim(unsigned i) const { return TensorAccess::data(*this).shape.at(i); }
std::size_t Tensor::numElements() const { return poplar_mock::product(TensorAccess::data(*this).shape); }
Type Tensor::elementType() const { return TensorAccess::data(*this).type; }
Tensor Tensor::slice(std::size_t begin, std::size_t end, unsigned dimension) const {
  const TensorData &d = TensorAccess::data(*this);
  if (dimension >= d.shape.size() || begin > end || end > d.shape[dimension])
    throw Error("poplar_mock: Tensor::slice out of range");
  if (d.concatParts && dimension == d.concatDim) {  // along the concat, at its parts' bounds: those parts
    std::size_t at = 0, first = 0;
    bool started = false;
    for (std::size_t i = 0; i < d.concatParts->size(); ++i) {
      if (at == begin) {
        first = i;
        started = true;
      }
      at += TensorAccess::data((*d.concatParts)[i]).shape.at(dimension);
      if (started && at == end) {
        if (i == first) return (*d.concatParts)[i];
        std::vector<Tensor> kept(d.concatParts->begin() + first, d.concatParts->begin() + i + 1);
        return concat(kept, dimension);
      }
      if (at >= end) break;
    }
  }
  std::vector<std::size_t> shape = d.shape;
  shape[dimension] = end - begin;
  const std::size_t inner = poplar_mock::product(d.shape, dimension + 1);
  const std::size_t outer = poplar_mock::product(std::vector<std::size_t>(d.shape.begin(), d.shape.begin() + dimension));
  const std::vector<Region> &regions = d.regions();
  std::vector<Region> out;
  if (regions.size() == 1) {  // one run of one variable (most slices): no search
    const Region &r = regions[0];
    for (std::size_t o = 0; o < outer; ++o) {
      const std::size_t b = r.begin + o * d.shape[dimension] * inner + begin * inner, e = b - begin * inner + end * inner;
      if (b == e) continue;
      if (!out.empty() && out.back().end == b)
        out.back().end = e;
      else
        out.push_back(Region{r.var, b, e});
    }
    return TensorAccess::make(TensorData{d.type, std::move(shape), std::move(out)});
  }
  const std::vector<std::size_t> &starts = d.starts();
  for (std::size_t o = 0; o < outer; ++o) {
    const std::size_t base = o * d.shape[dimension] * inner;
    poplar_mock::appendRange(regions, starts, base + begin * inner, base + end * inner, out);
  }
  return TensorAccess::make(TensorData{d.type, std::move(shape), std::move(out)});
}
Tensor Tensor::operator[](std::size_t i) const {
  Tensor s = slice(i, i + 1, 0);
  TensorData d = TensorAccess::data(s);
  d.shape.erase(d.shape.begin());
  d.concatParts = nullptr;
  return TensorAccess::make(std::move(d));
}
Tensor Tensor::flatten() const {
  TensorData d = TensorAccess::data(*this);
  if (d.shape.size() != 1) d.concatParts = nullptr;
  d.shape = {d.numElements()};
  return TensorAccess::make(std::move(d));
}
Tensor Tensor::reshape(ArrayRef<std::size_t> shape) const {
  TensorData d = TensorAccess::data(*this);
  std::vector<std::size_t> s(shape.begin(), shape.end());
  if (poplar_mock::product(s) != d.numElements()) throw Error("poplar_mock: reshape changes the size");
  if (s != d.shape) d.concatParts = nullptr;
  d.shape = s;
  return TensorAccess::make(std::move(d));
}
Tensor concat(ArrayRef<Tensor> ts, unsigned dimension) {
  if (ts.size() == 0) throw Error("poplar_mock: concat of nothing");
  const TensorData &first = TensorAccess::data(ts[0]);
  std::vector<std::size_t> shape = first.shape;
  shape[dimension] = 0;
  for (const Tensor &t : ts) shape[dimension] += TensorAccess::data(t).shape.at(dimension);
  const std::size_t outer =
      poplar_mock::product(std::vector<std::size_t>(first.shape.begin(), first.shape.begin() + dimension));
  // the runs are made when first used (poplar_mock::RegionList)
  auto parts = std::make_shared<const std::vector<Tensor>>(ts.begin(), ts.end());
  auto make = [parts = *parts, outer, dimension] {
    std::vector<Region> out;
    if (outer == 1) {  // the parts one after another (a flat concat): their runs, merged where they meet
      for (const Tensor &t : parts)
        for (const Region &r : TensorAccess::data(t).regions()) {
          if (!out.empty() && out.back().var == r.var && out.back().end == r.begin)
            out.back().end = r.end;
          else
            out.push_back(r);
        }
      return out;
    }
    for (std::size_t o = 0; o < outer; ++o)
      for (std::size_t i = 0; i < parts.size(); ++i) {
        const TensorData &d = TensorAccess::data(parts[i]);
        const std::size_t block = poplar_mock::product(d.shape, dimension);
        poplar_mock::appendRange(d.regions(), d.starts(), o * block, (o + 1) * block, out);
      }
    return out;
  };
  TensorData out{first.type, std::move(shape), std::make_shared<const poplar_mock::RegionList>(std::function(make))};
  out.concatParts = std::move(parts);
  out.concatDim = dimension;
  return TensorAccess::make(std::move(out));
}

const Target &Graph::getTarget() const { return GraphData::of(*this).target; }
static Tensor newVariable(GraphData &g, const Type &type, ArrayRef<std::size_t> shape,
                          const DebugContext &dc, bool constant) {
  poplar_mock::Variable v;
  v.name = GraphData::name(dc);
  v.type = TypeAccess::id(type);
  v.shape.assign(shape.begin(), shape.end());
  v.n = poplar_mock::product(v.shape);
  v.constant = constant;
  if (g.holdsData) v.data.assign(v.n * poplar_mock::typeBytes(v.type), 0);
  g.vars.push_back(std::move(v));
  const unsigned id = unsigned(g.vars.size() - 1);
  return TensorAccess::make(TensorData{type, g.vars.back().shape, {Region{id, 0, g.vars.back().n}}});
}
Tensor Graph::addVariable(const Type &type, ArrayRef<std::size_t> shape, const DebugContext &dc) {
  return newVariable(GraphData::of(*this), type, shape, dc, false);
}
Tensor Graph::addConstantValue(const Type &type, ArrayRef<std::size_t> shape, double val,
                               const DebugContext &dc) {
  GraphData &g = GraphData::of(*this);
  Tensor t = newVariable(g, type, shape, dc, true);
  g.vars.back().hasInit = true;
  g.vars.back().init = val;
  return t;
}
void Graph::setTileMapping(const Tensor &t, unsigned tileNum) {
  GraphData &g = GraphData::of(*this);
  if (tileNum >= g.target.getNumTiles()) throw Error("poplar_mock: tile " + std::to_string(tileNum) + " out of range");
  for (const Region &r : TensorAccess::data(t).regions()) {
    auto &var = g.vars[r.var];
    auto &m = var.mapping;
    if (r.begin >= var.mappedEnd) {  // past everything mapped so far (a mapping built in order): appended
      m.push_back({r.begin, r.end, tileNum});
      var.mappedEnd = r.end;
      continue;
    }
    // a new mapping replaces the old one over its range
    std::vector<poplar_mock::Mapping> kept;
    for (const auto &old : m) {
      if (old.end <= r.begin || old.begin >= r.end) { kept.push_back(old); continue; }
      if (old.begin < r.begin) kept.push_back({old.begin, r.begin, old.tile});
      if (old.end > r.end) kept.push_back({r.end, old.end, old.tile});
    }
    kept.push_back({r.begin, r.end, tileNum});
    m.swap(kept);
    for (const auto &k : m) var.mappedEnd = std::max(var.mappedEnd, k.end);
  }
}
void Graph::setTileMapping(VertexRef v, unsigned tileNum) {
  GraphData &g = GraphData::of(*this);
  if (tileNum >= g.target.getNumTiles()) throw Error("poplar_mock: tile out of range");
  g.vertices.at(GraphData::id(v)).tile = int(tileNum);
}
ComputeSet Graph::addComputeSet(const DebugContext &dc) {
  GraphData &g = GraphData::of(*this);
  g.computeSets.emplace_back();
  g.computeSetNames.push_back(GraphData::name(dc));
  return GraphData::computeSet(unsigned(g.computeSets.size() - 1));
}
VertexRef Graph::addVertex(ComputeSet cs, StringRef vertexType) {
  GraphData &g = GraphData::of(*this);
  poplar_mock::VertexRecord v;
  v.type = std::string(vertexType);
  v.cs = GraphData::id(cs);
  g.vertices.push_back(std::move(v));
  const unsigned id = unsigned(g.vertices.size() - 1);
  g.computeSets.at(GraphData::id(cs)).push_back(id);
  return GraphData::vertex(id);
}
FieldRef VertexRef::operator[](StringRef name) const { return GraphData::field(id_, std::string(name)); }
void Graph::connect(FieldRef field, const Tensor &tensor) {
  auto [vertex, name] = GraphData::fieldOf(field);
  auto &fields = GraphData::of(*this).vertices.at(vertex).fields;
  if (fields.count(name)) throw Error("poplar_mock: field '" + name + "' connected twice");
  fields.emplace(name, tensor);
}
void Graph::setFieldValue(FieldRef field, double val) {
  auto [vertex, name] = GraphData::fieldOf(field);
  GraphData::of(*this).vertices.at(vertex).values[name] = val;
}
void Graph::setTensorValue(const Tensor &t, double val) {
  GraphData &g = GraphData::of(*this);
  for (const Region &r : TensorAccess::data(t).regions()) {
    if (r.begin != 0 || r.end != g.vars[r.var].n)
      throw Error("poplar_mock: setInitialValue on part of a variable is not modelled");
    g.vars[r.var].hasInit = true;
    g.vars[r.var].init = val;
  }
}
void Graph::setTensorValues(const Tensor &t, const std::vector<double> &vals) {
  GraphData &g = GraphData::of(*this);
  const auto &regions = TensorAccess::data(t).regions();
  if (regions.size() != 1 || regions[0].begin != 0 || regions[0].end != g.vars[regions[0].var].n ||
      vals.size() != g.vars[regions[0].var].n)
    throw Error("poplar_mock: setInitialValue with values needs a whole variable and one value per element");
  g.vars[regions[0].var].initValues = vals;
}
void Graph::setPerfEstimate(const VertexRef &v, std::uint64_t cycles) {
  GraphData::of(*this).vertices.at(GraphData::id(v)).perf = cycles;
}
bool Graph::addCodelets(StringRef src, const OptionFlags &, StringRef) {
  GraphData::of(*this).codelets.push_back(std::string(src));
  return true;
}
RemoteBuffer Graph::addRemoteBuffer(const std::string &handle, const Type &elementType,
                                    std::size_t numElements, std::size_t repeats, bool, bool) {
  GraphData &g = GraphData::of(*this);
  poplar_mock::RemoteRecord r{handle, TypeAccess::id(elementType), numElements, repeats, {}};
  if (g.holdsData) r.data.assign(numElements * repeats * poplar_mock::typeBytes(r.type), 0);
  g.remotes.push_back(std::move(r));
  return GraphData::remote(&g, unsigned(g.remotes.size() - 1));
}
std::size_t RemoteBuffer::numElements() const { return graph_->remotes.at(id_).numElements; }
std::size_t RemoteBuffer::getRepeats() const { return graph_->remotes.at(id_).repeats; }
Type RemoteBuffer::elementType() const { return TypeAccess::make(graph_->remotes.at(id_).type); }

namespace program {
using poplar_mock::ProgramNode;
Program::Program() : node_(std::make_shared<ProgramNode>()) {}
Sequence::Sequence(const DebugContext &dc) { node_->name = GraphData::name(dc); }
Sequence::Sequence(ArrayRef<Program> programs, const DebugContext &dc) {
  node_->name = GraphData::name(dc);
  for (const Program &p : programs) add(p);
}
void Sequence::add(const Program &p) {
  node_->children.push_back(std::make_shared<ProgramNode>(poplar_mock::ProgramAccess::node(p)));
}
Execute::Execute(ComputeSet cs, const DebugContext &dc) {
  node_->kind = ProgramNode::EXECUTE;
  node_->cs = GraphData::id(cs);
  node_->name = GraphData::name(dc);
}
Repeat::Repeat(unsigned count, const Program &prog, const DebugContext &dc) {
  node_->kind = ProgramNode::REPEAT;
  node_->count = count;
  node_->children.push_back(std::make_shared<ProgramNode>(poplar_mock::ProgramAccess::node(prog)));
  node_->name = GraphData::name(dc);
}
Copy::Copy(const Tensor &src, const Tensor &dst, bool, const DebugContext &dc) {
  if (TensorAccess::data(src).numElements() != TensorAccess::data(dst).numElements() ||
      src.elementType() != dst.elementType())
    throw Error("poplar_mock: Copy between tensors of different sizes or types");
  node_->kind = ProgramNode::COPY;
  node_->src = src;
  node_->dst = dst;
  node_->name = GraphData::name(dc);
}
Copy::Copy(const Tensor &src, const RemoteBuffer &buffer, const Tensor &offset, const DebugContext &dc) {
  if (src.numElements() != buffer.numElements()) throw Error("poplar_mock: remote Copy of the wrong size");
  node_->kind = ProgramNode::TO_REMOTE;
  node_->src = src;
  node_->offset = offset;
  node_->remoteGraph = &GraphData::graphOf(buffer);
  node_->remote = GraphData::id(buffer);
  node_->name = GraphData::name(dc);
}
Copy::Copy(const RemoteBuffer &buffer, const Tensor &dst, const Tensor &offset, const DebugContext &dc) {
  if (dst.numElements() != buffer.numElements()) throw Error("poplar_mock: remote Copy of the wrong size");
  node_->kind = ProgramNode::FROM_REMOTE;
  node_->dst = dst;
  node_->offset = offset;
  node_->remoteGraph = &GraphData::graphOf(buffer);
  node_->remote = GraphData::id(buffer);
  node_->name = GraphData::name(dc);
}
}  // namespace program
}  // namespace poplar
