// Mock of <poplar/Quarter.hpp> (Poplar 3.x): QuarterMetadata::Format, the
// float8 formats PopART's float8util.hpp passes (F143 and F152, as
// graphcore/popart willow/src/util/float8util.cpp names them).
#pragma once
namespace poplar {
class QuarterMetadata {
public:
  enum class Format { F143, F152 };
};
}  // namespace poplar
