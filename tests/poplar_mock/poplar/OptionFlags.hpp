// Mock of <poplar/OptionFlags.hpp> (Poplar 3.x): string key/value options,
// default-constructible (poplibs and PopART default them as `= {}`).
#pragma once
namespace poplar {
class OptionFlags {
public:
  OptionFlags();
};
}  // namespace poplar
