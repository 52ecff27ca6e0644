// Mock of <poplar/StreamCallback.hpp> (Poplar 3.x): the callback interface
// PopART's Devicex::PrefetchCallback implements (popart/popx/devicex.hpp:
// prefetch returning StreamCallback::Result, fetch, complete).
#pragma once
namespace poplar {
class StreamCallback {
public:
  enum class Result { Success, NotAvailable };
  virtual ~StreamCallback() = default;
  virtual Result prefetch(void *p) = 0;
  virtual void fetch(void *p) = 0;
  virtual void complete() = 0;
};
}  // namespace poplar
