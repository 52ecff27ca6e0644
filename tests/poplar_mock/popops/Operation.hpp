// Mock of <popops/Operation.hpp> (poplibs 3.x).
#pragma once
namespace popops {
enum class Operation { ADD, MUL, MIN, MAX, LOGICAL_AND, LOGICAL_OR, SQUARE_ADD, LOG_ADD };
}
