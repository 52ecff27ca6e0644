// Mock of <poplar/DebugContext.hpp> (Poplar 3.x): SourceLocation,
// DebugNameAndId and DebugContext.
#pragma once
#include <string>
namespace poplar_mock {
struct GraphData;
}
namespace poplar {
class SourceLocation {
public:
  static SourceLocation Current();
};
class DebugNameAndId {};
class DebugContext {
public:
  // Default-constructible: poplibs 3.x headers default it as `= {}`, and
  // from a name (poplin/Convolution.hpp defaults one as `= {"biases"}`).
  DebugContext(SourceLocation loc = SourceLocation::Current());
  DebugContext(const char *name, SourceLocation loc = SourceLocation::Current());
  DebugContext(std::string name, SourceLocation loc = SourceLocation::Current());
  DebugContext(const DebugNameAndId &, std::string = "",
               SourceLocation loc = SourceLocation::Current());

private:
  friend struct ::poplar_mock::GraphData;
  std::string name_;
};
}  // namespace poplar
