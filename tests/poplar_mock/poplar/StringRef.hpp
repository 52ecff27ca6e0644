// Mock of <poplar/StringRef.hpp> (Poplar 3.x): a non-owning string view.
#pragma once
#include <string>
namespace poplar {
class StringRef {
public:
  StringRef(const char *);
  StringRef(const std::string &);
};
}  // namespace poplar
