// Test-only: the host interpreter of mock Poplar programs (Interpreter.hpp).
// Includes the codelet sources unchanged and knows each vertex's fields by
// name (the table below), as popc's generated vertex state does on an IPU.
#include "Interpreter.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <type_traits>

#include <poplar/HalfFloat.hpp>
#include <poplar/Vertex.hpp>

#include "FieldAccess.hpp"
#include "neuron_codelets.cpp"
#include "network_codelets.cpp"

namespace poplar_mock {
namespace selfcheck {
// A wrong vertex for the interpreter's self-check: it reads its Output field.
class ReadsOutput : public poplar::Vertex {
public:
  poplar::Input<poplar::Vector<float>> in;
  poplar::Output<poplar::Vector<float>> out;
  bool compute() {
    for (unsigned i = 0; i < in.size(); ++i) out[i] = out[i] + in[i];
    return true;
  }
};
}  // namespace selfcheck
using poplar::Tensor;
namespace {
enum Kind { IN, OUT, INOUT, VALUE };
const char *kindName(Kind k) {
  static const char *n[] = {"Input", "Output", "InOut", "value"};
  return n[k];
}
template <typename T> constexpr int typeIdOf() {
  if constexpr (std::is_same_v<T, float>) return T_FLOAT;
  else if constexpr (std::is_same_v<T, half>) return T_HALF;
  else if constexpr (std::is_same_v<T, int>) return T_INT;
  else if constexpr (std::is_same_v<T, unsigned>) return T_UINT;
  else if constexpr (std::is_same_v<T, unsigned char>) return T_UCHAR;
  else return -1;
}
template <typename F> struct Traits {  // a plain member: a value set with setInitialValue
  static constexpr Kind kind = VALUE;
  static constexpr bool vec = false;
  using E = F;
};
template <typename T> struct Traits<poplar::Input<T>> {
  static constexpr Kind kind = IN;
  static constexpr bool vec = false;
  using E = T;
};
template <typename T> struct Traits<poplar::Output<T>> {
  static constexpr Kind kind = OUT;
  static constexpr bool vec = false;
  using E = T;
};
template <typename T> struct Traits<poplar::InOut<T>> {
  static constexpr Kind kind = INOUT;
  static constexpr bool vec = false;
  using E = T;
};
template <typename T, poplar::VectorLayout L, unsigned A, bool I>
struct Traits<poplar::Input<poplar::Vector<T, L, A, I>>> {
  static constexpr Kind kind = IN;
  static constexpr bool vec = true;
  using E = T;
};
template <typename T, poplar::VectorLayout L, unsigned A, bool I>
struct Traits<poplar::Output<poplar::Vector<T, L, A, I>>> {
  static constexpr Kind kind = OUT;
  static constexpr bool vec = true;
  using E = T;
};
template <typename T, poplar::VectorLayout L, unsigned A, bool I>
struct Traits<poplar::InOut<poplar::Vector<T, L, A, I>>> {
  static constexpr Kind kind = INOUT;
  static constexpr bool vec = true;
  using E = T;
};

struct FieldSpec {
  std::string name;
  Kind kind;
  bool vec;
  int type;
  std::function<void(void *, void *, std::size_t)> bind;
  std::function<void(void *, double)> set;
};
struct VertexSpec {
  bool multi;
  std::vector<FieldSpec> fields;
  std::function<void *()> make;
  std::function<void(void *)> destroy;
  std::function<void(void *, unsigned)> compute;
};
template <typename V, typename Fd, typename Get>
FieldSpec makeField(const char *name, Get get) {
  using Tr = Traits<Fd>;
  FieldSpec s{name, Tr::kind, Tr::vec, -1, {}, {}};
  if constexpr (Tr::kind == VALUE) {
    s.set = [get](void *v, double x) { get(*static_cast<V *>(v)) = static_cast<Fd>(x); };
  } else {
    using E = typename Tr::E;
    s.type = typeIdOf<std::remove_const_t<E>>();
    s.bind = [get](void *v, void *data, std::size_t n) {
      if constexpr (Tr::vec)
        FieldAccess::bind(get(*static_cast<V *>(v)), static_cast<E *>(data), n);
      else
        FieldAccess::bindScalar(get(*static_cast<V *>(v)), static_cast<E *>(data));
    };
  }
  return s;
}
template <typename V> VertexSpec makeVertex(std::vector<FieldSpec> fields) {
  VertexSpec s;
  s.multi = std::is_base_of_v<poplar::MultiVertex, V>;
  s.fields = std::move(fields);
  s.make = [] { return static_cast<void *>(new V()); };
  s.destroy = [](void *v) { delete static_cast<V *>(v); };
  s.compute = [](void *v, unsigned worker) {
    if constexpr (std::is_base_of_v<poplar::MultiVertex, V>)
      static_cast<V *>(v)->compute(worker);
    else
      static_cast<V *>(v)->compute();
    (void)worker;
  };
  return s;
}
#define FIELD(m) makeField<V, decltype(V::m)>(#m, [](V &v) -> auto & { return v.m; })

template <typename T> void addTyped(std::map<std::string, VertexSpec> &r, const std::string &t) {
  const std::string suffix = "<" + t + ">";
  {
    using V = NeuronForward<T>;
    r["NeuronForward" + suffix] = makeVertex<V>(
        {FIELD(current), FIELD(vPrev), FIELD(aPrev), FIELD(beta), FIELD(rho), FIELD(vNew), FIELD(aNew),
         FIELD(z), FIELD(d), FIELD(thresholds), FIELD(threshold), FIELD(adaptStrength), FIELD(scale),
         FIELD(reset), FIELD(surrogate), FIELD(kind), FIELD(perNeuron), FIELD(colBegin), FIELD(colEnd)});
  }
  {
    using V = PackSpikes<T>;
    r["PackSpikes" + suffix] = makeVertex<V>({FIELD(z), FIELD(bits), FIELD(numNeurons)});
  }
  {
    using V = NeuronBackward<T>;
    r["NeuronBackward" + suffix] = makeVertex<V>(
        {FIELD(gradZ), FIELD(gradV), FIELD(gradA), FIELD(bits), FIELD(d), FIELD(beta), FIELD(rho),
         FIELD(gradCurrent), FIELD(gradVPrev), FIELD(gradAPrev), FIELD(gradVPre), FIELD(ownBits),
         FIELD(adaptStrength), FIELD(reset), FIELD(kind), FIELD(colBegin), FIELD(colEnd), FIELD(ownSlice)});
  }
  {
    using V = BitsMatmulForward<T>;
    r["BitsMatmulForward" + suffix] = makeVertex<V>({FIELD(bits), FIELD(weight), FIELD(bitsRec), FIELD(weightRec),
                                                     FIELD(bias), FIELD(out), FIELD(numInputs), FIELD(numRec)});
  }
  {
    using V = BitsMatmulGradWeight<T>;
    r["BitsMatmulGradWeight" + suffix] =
        makeVertex<V>({FIELD(bits), FIELD(gradOut), FIELD(gradWeight), FIELD(numInputs)});
  }
  {
    using V = DenseGradInput<T>;
    r["DenseGradInput" + suffix] = makeVertex<V>({FIELD(weight), FIELD(gradOut), FIELD(partial), FIELD(numInputs)});
  }
  {
    using V = ListedGradInput<T>;
    r["ListedGradInput" + suffix] =
        makeVertex<V>({FIELD(weight), FIELD(gradOut), FIELD(live), FIELD(partial), FIELD(numInputs)});
  }
  {
    using V = ReduceSlices<T>;
    r["ReduceSlices" + suffix] =
        makeVertex<V>({FIELD(parts), FIELD(out), FIELD(numParts), FIELD(width), FIELD(rowBegin)});
  }
  {
    using V = LeakyIntegrate<T>;
    r["LeakyIntegrate" + suffix] = makeVertex<V>({FIELD(current), FIELD(vPrev), FIELD(beta), FIELD(vNew)});
  }
  {
    using V = LeakyIntegrateBackward<T>;
    r["LeakyIntegrateBackward" + suffix] = makeVertex<V>({FIELD(gradOut), FIELD(vPrev), FIELD(beta), FIELD(carried),
                                                          FIELD(gradCurrent), FIELD(gradBeta), FIELD(gradBias)});
  }
  {
    using V = AccumulateProducts<T>;
    r["AccumulateProducts" + suffix] = makeVertex<V>({FIELD(x), FIELD(y), FIELD(acc)});
  }
  {
    using V = ThresholdGrad<T>;
    r["ThresholdGrad" + suffix] =
        makeVertex<V>({FIELD(gradVNew), FIELD(gradV), FIELD(bits), FIELD(gradThreshold), FIELD(colBegin)});
  }
  {
    using V = AccumulateRows<T>;
    r["AccumulateRows" + suffix] = makeVertex<V>({FIELD(x), FIELD(acc), FIELD(rows)});
  }
  {
    using V = ZeroFill<T>;
    r["ZeroFill" + suffix] = makeVertex<V>({FIELD(out)});
  }
  {
    using V = SumParts<T>;
    r["SumParts" + suffix] = makeVertex<V>({FIELD(parts), FIELD(out), FIELD(numParts)});
  }
  {
    using V = StepStore<T>;
    r["StepStore" + suffix] = makeVertex<V>({FIELD(src), FIELD(dst), FIELD(step), FIELD(slots)});
  }
  {
    using V = StepLoad<T>;
    r["StepLoad" + suffix] = makeVertex<V>(
        {FIELD(src), FIELD(dst), FIELD(step), FIELD(slots), FIELD(rows), FIELD(rowStride), FIELD(stepStride),
         FIELD(offset)});
  }
}
const std::map<std::string, VertexSpec> &registry() {
  static const std::map<std::string, VertexSpec> r = [] {
    std::map<std::string, VertexSpec> m;
    addTyped<float>(m, "float");
    addTyped<half>(m, "half");
    {
      using V = StepLoad<unsigned char>;
      m["StepLoad<unsigned char>"] = makeVertex<V>(
          {FIELD(src), FIELD(dst), FIELD(step), FIELD(slots), FIELD(rows), FIELD(rowStride), FIELD(stepStride),
         FIELD(offset)});
    }
    {
      using V = StepStore<unsigned char>;
      m["StepStore<unsigned char>"] = makeVertex<V>({FIELD(src), FIELD(dst), FIELD(step), FIELD(slots)});
    }
    {
      using V = ZeroFill<unsigned char>;
      m["ZeroFill<unsigned char>"] = makeVertex<V>({FIELD(out)});
    }
    {
      using V = selfcheck::ReadsOutput;
      m["poplar_mock::ReadsOutput"] = makeVertex<V>({FIELD(in), FIELD(out)});
    }
    {
      using V = StepCount;
      m["StepCount"] = makeVertex<V>({FIELD(step), FIELD(delta)});
    }
    return m;
  }();
  return r;
}
#undef FIELD

unsigned char *at(GraphData &g, unsigned var, std::size_t i) {
  Variable &v = g.vars[var];
  return v.data.data() + i * typeBytes(v.type);
}
void gather(const GraphData &g, const Tensor &t, unsigned char *out) {
  for (const Region &r : TensorAccess::data(t).regions()) {
    const Variable &v = g.vars[r.var];
    const std::size_t b = typeBytes(v.type);
    std::memcpy(out, v.data.data() + r.begin * b, (r.end - r.begin) * b);
    out += (r.end - r.begin) * b;
  }
}
void scatter(GraphData &g, const Tensor &t, const unsigned char *in) {
  for (const Region &r : TensorAccess::data(t).regions()) {
    Variable &v = g.vars[r.var];
    if (v.constant) throw Error("poplar_mock: a program writes the constant '" + v.name + "'");
    const std::size_t b = typeBytes(v.type);
    std::memcpy(at(g, r.var, r.begin), in, (r.end - r.begin) * b);
    in += (r.end - r.begin) * b;
  }
}
std::size_t tensorBytes(const Tensor &t) {
  return TensorAccess::data(t).numElements() * typeBytes(TypeAccess::id(t.elementType()));
}
std::size_t offTileBytes(const GraphData &g, const Tensor &t, int tile) {
  std::size_t bytes = 0;
  for (const Region &r : TensorAccess::data(t).regions())
    for (const Mapping &m : g.vars[r.var].mapping) {
      const std::size_t b = std::max(m.begin, r.begin), e = std::min(m.end, r.end);
      if (b < e && int(m.tile) != tile) bytes += (e - b) * typeBytes(g.vars[r.var].type);
    }
  return bytes;
}
template <typename T> void fill(unsigned char *p, std::size_t n, double val) {
  for (std::size_t i = 0; i < n; ++i) {
    T x = static_cast<T>(static_cast<float>(val));
    std::memcpy(p + i * sizeof(T), &x, sizeof(T));
  }
}
void fillValue(Variable &v, double val, std::size_t only = ~std::size_t(0)) {
  unsigned char *p = v.data.data();
  if (only != ~std::size_t(0)) {
    Variable one = v;
    one.n = 1;
    one.data.assign(typeBytes(v.type), 0);
    fillValue(one, val);
    std::memcpy(p + only * typeBytes(v.type), one.data.data(), typeBytes(v.type));
    return;
  }
  switch (v.type) {
    case T_BOOL: case T_UCHAR: fill<unsigned char>(p, v.n, val); break;
    case T_INT: for (std::size_t i = 0; i < v.n; ++i) { int x = int(val); std::memcpy(p + 4 * i, &x, 4); } break;
    case T_UINT: for (std::size_t i = 0; i < v.n; ++i) { unsigned x = unsigned(val); std::memcpy(p + 4 * i, &x, 4); } break;
    case T_HALF: fill<half>(p, v.n, val); break;
    case T_FLOAT: fill<float>(p, v.n, val); break;
  }
}

std::string vertexName(const GraphData &g, unsigned id) {
  const VertexRecord &v = g.vertices[id];
  return "vertex " + std::to_string(id) + " (" + v.type + ", compute set '" + g.computeSetNames[v.cs] + "')";
}
void checkVertex(const GraphData &g, unsigned id) {
  const VertexRecord &v = g.vertices[id];
  auto found = registry().find(v.type);
  if (found == registry().end()) throw Error("poplar_mock: " + vertexName(g, id) + ": unknown vertex type");
  if (v.tile < 0) throw Error("poplar_mock: " + vertexName(g, id) + " has no tile mapping");
  for (const auto &[name, tensor] : v.fields) {
    bool known = false;
    for (const FieldSpec &f : found->second.fields)
      if (f.name == name) {
        known = true;
        if (f.kind == VALUE) throw Error("poplar_mock: " + vertexName(g, id) + ": '" + name + "' is not a tensor field");
        if (f.type != TypeAccess::id(tensor.elementType()))
          throw Error("poplar_mock: " + vertexName(g, id) + ": field '" + name + "' takes " + typeName(f.type) +
                      ", connected to " + typeName(TypeAccess::id(tensor.elementType())));
        if (!f.vec && tensor.numElements() != 1)
          throw Error("poplar_mock: " + vertexName(g, id) + ": scalar field '" + name + "' connected to " +
                      std::to_string(tensor.numElements()) + " elements");
      }
    if (!known) throw Error("poplar_mock: " + vertexName(g, id) + " has no field '" + name + "'");
  }
  for (const FieldSpec &f : found->second.fields) {
    const bool ok = f.kind == VALUE ? v.values.count(f.name) > 0 : v.fields.count(f.name) > 0;
    if (!ok) throw Error("poplar_mock: " + vertexName(g, id) + ": field '" + f.name + "' (" + kindName(f.kind) +
                         ") is left unconnected");
  }
}

// One run of a vertex on fresh buffers, its Output fields pre-filled with `pattern`.
std::vector<std::vector<std::uint64_t>> runOnce(GraphData &g, const VertexRecord &v, const VertexSpec &spec,
                                                unsigned char pattern) {
  std::vector<std::vector<std::uint64_t>> buffers;
  void *instance = spec.make();
  try {
    for (const FieldSpec &f : spec.fields) {
      if (f.kind == VALUE) {
        f.set(instance, v.values.at(f.name));
        buffers.emplace_back();
        continue;
      }
      const Tensor &t = v.fields.at(f.name);
      const std::size_t bytes = tensorBytes(t);
      buffers.emplace_back((bytes + 7) / 8 + 1);
      unsigned char *p = reinterpret_cast<unsigned char *>(buffers.back().data());
      if (f.kind == OUT)
        std::memset(p, pattern, bytes);
      else
        gather(g, t, p);
      f.bind(instance, p, TensorAccess::data(t).numElements());
    }
    for (unsigned w = 0; w < (spec.multi ? 6u : 1u); ++w) spec.compute(instance, w);
  } catch (...) {
    spec.destroy(instance);
    throw;
  }
  spec.destroy(instance);
  return buffers;
}
void execute(GraphData &g, unsigned cs) {
  RunStats &s = g.stats;
  if (std::getenv("POPLAR_MOCK_TRACE"))
    std::fprintf(stderr, "execute %s (%zu vertices)\n", g.computeSetNames[cs].c_str(), g.computeSets[cs].size());
  for (unsigned id : g.computeSets.at(cs)) {
    const VertexRecord &v = g.vertices[id];
    const VertexSpec &spec = registry().at(v.type);
    auto first = runOnce(g, v, spec, 0x00);
    auto second = runOnce(g, v, spec, 0xA5);
    for (std::size_t i = 0; i < spec.fields.size(); ++i) {
      const FieldSpec &f = spec.fields[i];
      if (f.kind == VALUE || f.kind == IN) continue;
      const std::size_t bytes = tensorBytes(v.fields.at(f.name));
      if (std::memcmp(first[i].data(), second[i].data(), bytes) != 0)
        throw Error("poplar_mock: " + vertexName(g, id) + " reads its " + kindName(f.kind) + " field '" + f.name +
                    "' before writing it, or leaves part of it unwritten" +
                    (f.kind == OUT ? "" : " (an InOut field must be written from what it read)"));
      scatter(g, v.fields.at(f.name), reinterpret_cast<const unsigned char *>(first[i].data()));
    }
    for (const auto &[name, t] : v.fields) s.exchangedBytes += offTileBytes(g, t, v.tile);
    ++s.vertexRuns;
  }
}
unsigned readOffset(const GraphData &g, const Tensor &offset) {
  if (offset.numElements() != 1 || TypeAccess::id(offset.elementType()) != T_UINT)
    throw Error("poplar_mock: a remote-buffer offset must be one unsigned int");
  unsigned row;
  gather(g, offset, reinterpret_cast<unsigned char *>(&row));
  return row;
}
void runNode(GraphData &g, const ProgramNode &n) {
  RunStats &s = g.stats;
  switch (n.kind) {
    case ProgramNode::SEQUENCE:
      for (const auto &c : n.children) runNode(g, *c);
      break;
    case ProgramNode::REPEAT:
      for (unsigned i = 0; i < n.count; ++i) runNode(g, *n.children.at(0));
      break;
    case ProgramNode::EXECUTE:
      execute(g, n.cs);
      break;
    case ProgramNode::COPY: {
      std::vector<unsigned char> tmp(tensorBytes(n.src));
      gather(g, n.src, tmp.data());
      scatter(g, n.dst, tmp.data());
      s.exchangedBytes += tmp.size();
      break;
    }
    case ProgramNode::TO_REMOTE: case ProgramNode::FROM_REMOTE: {
      if (n.remoteGraph != &g) throw Error("poplar_mock: a remote buffer of another graph");
      RemoteRecord &r = g.remotes.at(n.remote);
      const unsigned row = readOffset(g, n.offset);
      if (row >= r.repeats) throw Error("poplar_mock: remote buffer '" + r.handle + "' has no row " + std::to_string(row));
      const std::size_t bytes = r.numElements * typeBytes(r.type);
      unsigned char *p = r.data.data() + row * bytes;
      if (n.kind == ProgramNode::TO_REMOTE) {
        if (TypeAccess::id(n.src.elementType()) != r.type) throw Error("poplar_mock: remote Copy of the wrong type");
        gather(g, n.src, p);
      } else {
        if (TypeAccess::id(n.dst.elementType()) != r.type) throw Error("poplar_mock: remote Copy of the wrong type");
        scatter(g, n.dst, p);
      }
      s.remoteBytes += bytes;
      break;
    }
  }
}
}  // namespace

void initialise(GraphData &g) {
  if (!g.holdsData) throw Error("poplar_mock: a counting graph holds no data to run");
  g.checkMapped();
  for (unsigned id = 0; id < g.vertices.size(); ++id) checkVertex(g, id);
  for (Variable &v : g.vars)
    if (v.hasInit) fillValue(v, v.init);
    else if (!v.initValues.empty())
      for (std::size_t i = 0; i < v.n; ++i) fillValue(v, v.initValues[i], i);
  g.initialised = true;
}
void run(GraphData &g, const poplar::program::Program &p) {
  if (!g.initialised) initialise(g);
  runNode(g, ProgramAccess::node(p));
}
void write(GraphData &g, const Tensor &t, const void *src) {
  for (const Region &r : TensorAccess::data(t).regions()) {
    Variable &v = g.vars[r.var];
    const std::size_t b = typeBytes(v.type);
    std::memcpy(at(g, r.var, r.begin), src, (r.end - r.begin) * b);
    src = static_cast<const unsigned char *>(src) + (r.end - r.begin) * b;
  }
}
void read(const GraphData &g, const Tensor &t, void *dst) { gather(g, t, static_cast<unsigned char *>(dst)); }
RunStats &stats(GraphData &g) { return g.stats; }
}  // namespace poplar_mock
