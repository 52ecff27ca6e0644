// Mock of the Poplar 3.x host API used by spike_matmul_op.cpp (Graph, Tensor,
// Type, ComputeSet, VertexRef/FieldRef, Target, programs, DebugContext).
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>
namespace poplar {
class StringRef {
public:
  StringRef(const char *);
  StringRef(const std::string &);
};
template <typename T> class ArrayRef {
public:
  ArrayRef(std::initializer_list<T>);
  ArrayRef(const std::vector<T> &);
};
class SourceLocation {
public:
  static SourceLocation Current();
};
class DebugNameAndId {};
class DebugContext {
public:
  // Default-constructible: poplibs 3.x headers default it as `= {}`.
  DebugContext(SourceLocation loc = SourceLocation::Current());
  DebugContext(const char *);
  DebugContext(std::string);
  DebugContext(const DebugNameAndId &, std::string = "");
};
class OptionFlags {};
class Type {
public:
  bool operator==(const Type &) const;
  bool operator!=(const Type &) const;
};
extern Type FLOAT, HALF, INT, UNSIGNED_INT, UNSIGNED_CHAR, BOOL;
class Tensor {
public:
  Tensor operator[](std::size_t i) const;
  Tensor slice(std::size_t begin, std::size_t end, unsigned dimension) const;
  Tensor flatten() const;
  Tensor reshape(ArrayRef<std::size_t> shape) const;
  Tensor transpose() const;
  std::size_t dim(unsigned i) const;
  Type elementType() const;
};
Tensor concat(ArrayRef<Tensor> ts, unsigned dimension = 0);
class ComputeSet {};
class FieldRef {};
class VertexRef {
public:
  FieldRef operator[](StringRef name) const;
};
class Target {
public:
  unsigned getNumTiles() const;
};
class Graph {
public:
  const Target &getTarget() const;
  Tensor addVariable(const Type &type, ArrayRef<std::size_t> shape,
                     const DebugContext &debugContext = {""});
  void setTileMapping(const Tensor &t, unsigned tileNum);
  void setTileMapping(VertexRef v, unsigned tileNum);
  ComputeSet addComputeSet(const DebugContext &debugContext = {""});
  VertexRef addVertex(ComputeSet cs, StringRef vertexType);
  void connect(FieldRef field, const Tensor &tensor);
  template <typename T> void setInitialValue(FieldRef field, T val);
  void setPerfEstimate(const VertexRef &v, std::uint64_t cycles);
  bool addCodelets(StringRef src, const OptionFlags &options = {},
                   StringRef compileFlags = "");
};
namespace program {
class Program {};
class Sequence : public Program {
public:
  void add(const Program &p);
};
class Execute : public Program {
public:
  explicit Execute(ComputeSet cs, const DebugContext &debugContext = {""});
};
}  // namespace program
}  // namespace poplar
