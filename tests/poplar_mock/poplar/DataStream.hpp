// Mock of <poplar/DataStream.hpp> (Poplar 3.x): DataStream (a host stream,
// which PopART's IrLowering keeps in maps) and RemoteBuffer, a buffer in
// streaming memory (repeats rows of numElements elements) that programs copy
// to and from (program::Copy with an offset tensor naming the row).
#pragma once
#include <cstddef>
#include <string>
#include <poplar/Type.hpp>
namespace poplar_mock {
struct GraphData;
}
namespace poplar {
class DataStream {
public:
  DataStream();
};
class RemoteBuffer {
public:
  std::size_t numElements() const;
  std::size_t getRepeats() const;
  Type elementType() const;

private:
  friend struct ::poplar_mock::GraphData;
  const ::poplar_mock::GraphData *graph_ = nullptr;
  unsigned id_ = ~0u;
};
}  // namespace poplar
