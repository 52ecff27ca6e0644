// Mock of <poplar/Interval.hpp> (Poplar 3.x). PopLibs' popops/Cast.hpp
// includes it; nothing the op sources compile uses its Interval class, so the
// mock declares nothing.
#pragma once
