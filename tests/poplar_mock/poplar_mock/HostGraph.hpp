// Test-only: what the mock's Graph and programs record (poplar/Graph.hpp,
// poplar/Program.hpp), for the host interpreter (Interpreter.hpp) and the
// byte count of the plan. Not part of any SDK header; custom_ops/poplar/ must
// never include it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
#include <poplar/Graph.hpp>
#include <poplar/Program.hpp>
namespace poplar_mock {
// Element types, in the order of poplar/Type.hpp's extern declarations.
enum TypeId { T_BOOL = 0, T_UCHAR, T_INT, T_UINT, T_HALF, T_FLOAT };
std::size_t typeBytes(int id);
const char *typeName(int id);
struct TypeAccess {
  static int id(const poplar::Type &t) { return t.id_; }
  static poplar::Type make(int id) {
    poplar::Type t;
    t.id_ = id;
    return t;
  }
};
// A contiguous run of a variable's elements.
struct Region {
  unsigned var;
  std::size_t begin, end;
};
// A tensor's elements as runs of variables, in its row-major order. A concat's
// runs are made on first use (`regions()`): a counting graph never reads most
// of them (the carried tapes: [S, B, 1] pieces of a thousand tiles would be
// S B thousand runs), and reshapes share them.
class RegionList {
public:
  explicit RegionList(std::vector<Region> r) : regions_(std::move(r)) {}
  explicit RegionList(std::function<std::vector<Region>()> make) : make_(std::move(make)) {}
  const std::vector<Region> &get() const {
    if (make_) {
      regions_ = make_();
      make_ = nullptr;
    }
    return regions_;
  }
  // where each run starts in the tensor's element order (for slicing by binary search), made once
  const std::vector<std::size_t> &starts() const {
    if (starts_.size() != get().size()) {
      starts_.clear();
      starts_.reserve(regions_.size());
      std::size_t at = 0;
      for (const Region &r : regions_) {
        starts_.push_back(at);
        at += r.end - r.begin;
      }
    }
    return starts_;
  }

private:
  mutable std::vector<Region> regions_;
  mutable std::vector<std::size_t> starts_;
  mutable std::function<std::vector<Region>()> make_;
};
struct TensorData {
  poplar::Type type;
  std::vector<std::size_t> shape;
  std::shared_ptr<const RegionList> list;
  TensorData(poplar::Type t, std::vector<std::size_t> s, std::vector<Region> r)
      : type(t), shape(std::move(s)), list(std::make_shared<const RegionList>(std::move(r))) {}
  TensorData(poplar::Type t, std::vector<std::size_t> s, std::shared_ptr<const RegionList> l)
      : type(t), shape(std::move(s)), list(std::move(l)) {}
  // a concat's parts and dimension (a slice that is exactly one part is that part: no runs searched)
  std::shared_ptr<const std::vector<poplar::Tensor>> concatParts;
  unsigned concatDim = 0;
  const std::vector<Region> &regions() const { return list->get(); }
  const std::vector<std::size_t> &starts() const { return list->starts(); }
  std::size_t numElements() const;
};
struct TensorAccess {
  static const TensorData &data(const poplar::Tensor &t);
  static poplar::Tensor make(TensorData d);
  static bool valid(const poplar::Tensor &t) { return t.data_ != nullptr; }
};
struct Mapping {
  std::size_t begin, end;
  unsigned tile;
};
struct Variable {
  std::string name;
  int type;
  std::vector<std::size_t> shape;
  std::size_t n;
  std::vector<Mapping> mapping;
  std::size_t mappedEnd = 0;  // the end of the highest mapped element
  bool constant = false;
  bool hasInit = false;
  double init = 0;
  std::vector<double> initValues;  // one per element, when set so
  std::vector<unsigned char> data;  // empty in a counting graph
};
struct VertexRecord {
  std::string type;
  unsigned cs;
  int tile = -1;
  std::map<std::string, poplar::Tensor> fields;
  std::map<std::string, double> values;
  std::uint64_t perf = 0;
};
struct RemoteRecord {
  std::string handle;
  int type;
  std::size_t numElements, repeats;
  std::vector<unsigned char> data;
};
// What the interpreter ran: vertices executed, bytes copied between tiles
// (program Copy, and fields read from a tile other than the vertex's), and
// bytes moved to or from remote buffers.
struct RunStats {
  std::size_t vertexRuns = 0;
  std::size_t exchangedBytes = 0;
  std::size_t remoteBytes = 0;
};
class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};
struct GraphData {
  poplar::Target target;
  bool holdsData = true;
  std::vector<Variable> vars;
  std::vector<std::vector<unsigned>> computeSets;
  std::vector<std::string> computeSetNames;
  std::vector<VertexRecord> vertices;
  std::vector<RemoteRecord> remotes;
  std::vector<std::string> codelets;
  bool initialised = false;  // by the interpreter, before its first run
  RunStats stats;

  // A graph of `tiles` tiles of `bytesPerTile` bytes; a counting graph
  // (holdsData false) records everything but allocates no element storage.
  static poplar::Graph makeGraph(unsigned tiles, unsigned bytesPerTile, bool holdsData);
  static GraphData &of(const poplar::Graph &g);
  static unsigned id(const poplar::ComputeSet &cs) { return cs.id_; }
  static unsigned id(const poplar::VertexRef &v) { return v.id_; }
  static unsigned id(const poplar::RemoteBuffer &b) { return b.id_; }
  static const GraphData &graphOf(const poplar::RemoteBuffer &b) { return *b.graph_; }
  static poplar::ComputeSet computeSet(unsigned id);
  static poplar::VertexRef vertex(unsigned id);
  static poplar::FieldRef field(unsigned vertex, const std::string &name);
  static poplar::RemoteBuffer remote(const GraphData *g, unsigned id);
  static std::pair<unsigned, std::string> fieldOf(const poplar::FieldRef &f) {
    return {f.vertex_, f.name_};
  }
  static std::string name(const poplar::DebugContext &d) { return d.name_; }
  static void setName(poplar::DebugContext &d, std::string n) { d.name_ = std::move(n); }
  static void setTarget(poplar::Target &t, unsigned tiles, unsigned bytes) {
    t.tiles_ = tiles;
    t.bytesPerTile_ = bytes;
  }
  static std::shared_ptr<GraphData> &dataOf(poplar::Graph &g) { return g.data_; }

  // Bytes of variables and constants mapped to each tile (the vertices' state,
  // code and exchange buffers are not counted).
  std::vector<std::uint64_t> tileBytes() const;
  // Remote-buffer bytes (streaming memory).
  std::uint64_t remoteBytes() const;
  // Throws Error naming the first variable with an unmapped element.
  void checkMapped() const;
};
struct ProgramNode {
  enum Kind { SEQUENCE, EXECUTE, REPEAT, COPY, TO_REMOTE, FROM_REMOTE } kind = SEQUENCE;
  std::vector<std::shared_ptr<ProgramNode>> children;  // SEQUENCE; REPEAT's body
  unsigned cs = 0;                                     // EXECUTE
  unsigned count = 0;                                  // REPEAT
  poplar::Tensor src, dst, offset;                     // COPY, *_REMOTE
  const GraphData *remoteGraph = nullptr;
  unsigned remote = 0;
  std::string name;
};
struct ProgramAccess {
  static const ProgramNode &node(const poplar::program::Program &p) { return *p.node_; }
};
}  // namespace poplar_mock
