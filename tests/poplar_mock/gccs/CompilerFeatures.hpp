// Stand-in for <gccs/CompilerFeatures.hpp>, a Graphcore support header that
// ships with the Poplar SDK and is not public. The vendored poplibs
// popops/Cast.hpp includes it for one macro, GC_DEPRECATED, which it places
// before a function declaration; the standard attribute is what that means.
#pragma once
#define GC_DEPRECATED [[deprecated]]
