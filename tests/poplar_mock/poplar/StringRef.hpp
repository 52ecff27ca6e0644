// Mock of <poplar/StringRef.hpp> (Poplar 3.x): a non-owning string view.
#pragma once
#include <string>
namespace poplar {
class StringRef {
public:
  StringRef(const char *s) : s_(s) {}
  StringRef(const std::string &s) : s_(s) {}
  operator std::string() const { return s_; }

private:
  std::string s_;  // the mock copies: it is a view in the SDK
};
}  // namespace poplar
