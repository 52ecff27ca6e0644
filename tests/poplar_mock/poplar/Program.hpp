// Mock of <poplar/Program.hpp> (Poplar 3.x): programs. Graph.hpp does not
// include it here, so a source that builds programs must include it itself.
//
// Each program records what it does (poplar_mock::ProgramNode) for the host
// interpreter, tests/poplar_mock/poplar_mock/.
#pragma once
#include <cstddef>
#include <memory>
#include <poplar/ArrayRef.hpp>
#include <poplar/DataStream.hpp>
#include <poplar/DebugContext.hpp>
#include <poplar/GraphElements.hpp>
#include <poplar/Tensor.hpp>
namespace poplar_mock {
struct ProgramNode;
struct ProgramAccess;
}  // namespace poplar_mock
namespace poplar {
namespace program {
class Program {
public:
  Program();

protected:
  friend struct ::poplar_mock::ProgramAccess;
  std::shared_ptr<::poplar_mock::ProgramNode> node_;
};
class Sequence : public Program {
public:
  Sequence(const DebugContext &debugContext = {});
  Sequence(ArrayRef<Program> programs, const DebugContext &debugContext = {});
  void add(const Program &p);
};
class Execute : public Program {
public:
  explicit Execute(ComputeSet cs, const DebugContext &debugContext = {});
};
class Repeat : public Program {
public:
  Repeat(unsigned count, const Program &prog, const DebugContext &debugContext = {});
};
class Copy : public Program {
public:
  Copy(const Tensor &src, const Tensor &dst, bool dontOutline = false,
       const DebugContext &debugContext = {});
  Copy(const Tensor &src, const RemoteBuffer &buffer, const Tensor &offset,
       const DebugContext &debugContext = {});
  Copy(const RemoteBuffer &buffer, const Tensor &dst, const Tensor &offset,
       const DebugContext &debugContext = {});
};
}  // namespace program
}  // namespace poplar
