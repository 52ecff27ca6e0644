// Mock of <poplar/OptionFlags.hpp> (Poplar 3.x): string key/value options,
// default-constructible (poplibs and PopART default them as `= {}`).
#pragma once
#include <initializer_list>
#include <string>
#include <utility>
namespace poplar {
class OptionFlags {
public:
  OptionFlags();
  OptionFlags(std::initializer_list<std::pair<const std::string, std::string>>);
};
}  // namespace poplar
