// Mock of <poplar/HalfFloat.hpp>: on the IPU `half` is a native 16-bit IEEE
// type. Here it is 16 bits too, stored as IEEE binary16 and converted to and
// from float with round-to-nearest-even, so the host harness sees half's size
// (two to a 32-bit word) and half's rounding.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
struct half {
  half() = default;
  half(float v) : bits(fromFloat(v)) {}
  operator float() const { return toFloat(bits); }
  std::uint16_t bits;

private:
  static std::uint16_t fromFloat(float f) {
    std::uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const std::uint32_t sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) return std::uint16_t(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (mag >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds past 65504: inf
    if (mag < 0x38800000u) {  // below 2^-14: a subnormal half (or 0), in units of 2^-24
      const float units = std::fabs(f) * 16777216.0f;  // exact: a power-of-two scale
      return std::uint16_t(sign | std::uint32_t(std::nearbyint(units)));  // ties to even
    }
    // Rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even.
    const std::uint32_t rounded = mag - 0x38000000u + 0x0fffu + ((mag >> 13) & 1u);
    return std::uint16_t(sign | (rounded >> 13));
  }
  static float toFloat(std::uint16_t h) {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
      const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
      return sign ? -magnitude : magnitude;
    }
    const std::uint32_t x = exponent == 31 ? sign | 0x7f800000u | (mantissa << 13)
                                           : sign | ((exponent + 112) << 23) | (mantissa << 13);
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
  }
};
static_assert(sizeof(half) == 2, "half is 16 bits, as on the IPU");
