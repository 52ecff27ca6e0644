// Mock of <poplar/Program.hpp> (Poplar 3.x): programs. Graph.hpp does not
// include it here, so a source that builds programs must include it itself.
#pragma once
#include <poplar/DebugContext.hpp>
#include <poplar/GraphElements.hpp>
namespace poplar {
namespace program {
class Program {};
class Sequence : public Program {
public:
  void add(const Program &p);
};
class Execute : public Program {
public:
  explicit Execute(ComputeSet cs, const DebugContext &debugContext = {});
};
}  // namespace program
}  // namespace poplar
