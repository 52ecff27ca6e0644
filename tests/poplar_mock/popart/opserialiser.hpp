// Mock of <popart/opserialiser.hpp> (PopART 3.x).
#pragma once
#include <cstdint>
#include <string>
#include <popart/op.hpp>
namespace popart {
class OpSerialiserBase {
public:
  virtual ~OpSerialiserBase();
  void appendAttribute(const std::string &, float);
  void appendAttribute(const std::string &, int);
  void appendAttribute(const std::string &, int64_t);
  void appendAttribute(const std::string &, const std::string &);
};
}  // namespace popart
