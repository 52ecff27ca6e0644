// Mock of <poplar/DebugContext.hpp> (Poplar 3.x): SourceLocation,
// DebugNameAndId and DebugContext.
#pragma once
#include <string>
namespace poplar {
class SourceLocation {
public:
  static SourceLocation Current();
};
class DebugNameAndId {};
class DebugContext {
public:
  // Default-constructible: poplibs 3.x headers default it as `= {}`.
  DebugContext(SourceLocation loc = SourceLocation::Current());
  DebugContext(const char *, SourceLocation loc = SourceLocation::Current());
  DebugContext(std::string, SourceLocation loc = SourceLocation::Current());
  DebugContext(const DebugNameAndId &, std::string = "",
               SourceLocation loc = SourceLocation::Current());
};
}  // namespace poplar
