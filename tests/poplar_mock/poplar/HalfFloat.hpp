// Mock of <poplar/HalfFloat.hpp>: on the IPU `half` is a native type; on the
// host it converts to and from float.
#pragma once
struct half {
  half() = default;
  half(float v) : value(v) {}
  operator float() const { return value; }
  float value;
};
