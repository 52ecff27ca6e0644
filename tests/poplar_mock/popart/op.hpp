// Mock of <popart/op.hpp> (PopART 3.x, willow/include/popart/op.hpp plus the
// names/tensorinfo/attributes/opidentifier/error headers it pulls in).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>
namespace popart {
using Shape = std::vector<int64_t>;
using InIndex = int;
using OutIndex = int;
using OpDomain = std::string;
using OpType = std::string;
using OpVersion = unsigned;
using TensorId = std::string;
enum class DataType { UINT8, INT8, UINT16, INT16, INT32, INT64, UINT32, UINT64, BOOL, FLOAT, FLOAT16, BFLOAT16, DOUBLE, UNDEFINED };

class error : public std::runtime_error {
public:
  template <typename... Args>
  explicit error(const std::string &s, const Args &...args);
};

class TensorInfo {
public:
  TensorInfo(DataType, const Shape &);
  DataType dataType() const;
  const Shape &shape() const;
};

class Attributes {
public:
  using Int = int64_t;
  using Ints = std::vector<int64_t>;
  using Float = float;
  using String = std::string;
  template <typename T> T getAttribute(const std::string &key, const T &defaultValue) const;
};

struct NumInputs {
  NumInputs();
  NumInputs(int f);
  NumInputs(int _min, int _max);
};
struct OperatorIdentifier {
  OperatorIdentifier(const OpDomain &_domain, const OpType &_type, OpVersion _version,
                     NumInputs inputs = {}, int outputs = 0);
  bool operator==(const OperatorIdentifier &rhs) const;
  bool operator<(const OperatorIdentifier &rhs) const;
  OpDomain domain;
  OpType type;
  OpVersion version;
};

class Graph;
class OpSerialiserBase;
enum class GradOpInType { In = 0, Out, GradOut };
class GradInOutMapper {
public:
  GradInOutMapper(InIndex iGrad_, int iNonGrad_, GradOpInType);
};

class Op {
public:
  struct Settings {
    Settings(Graph &graph_, const std::string &name_);
    virtual ~Settings() = default;
  };
  Settings settings;
  OperatorIdentifier opid;

  Op(const OperatorIdentifier &_opid, const Op::Settings &settings);
  Op(const Op &);
  virtual ~Op();

  virtual void setup();
  virtual std::vector<std::unique_ptr<Op>> getGradOps();
  virtual const std::vector<GradInOutMapper> &gradInputInfo() const;
  virtual const std::map<int, int> &gradOutToNonGradIn() const;
  virtual std::unique_ptr<Op> clone() const = 0;
  virtual void appendAttributes(OpSerialiserBase &) const;
  virtual void appendOutlineAttributes(OpSerialiserBase &) const;
  virtual float getSubgraphValue() const = 0;
  constexpr float getHighSubgraphValue() const { return 1000.0f; }
  constexpr float getLowSubgraphValue() const { return 0.1f; }

  TensorInfo &inInfo(InIndex index);
  const TensorInfo &inInfo(InIndex index) const;
  TensorInfo &outInfo(OutIndex index);
  const TensorInfo &outInfo(OutIndex index) const;
  const Shape &inShape(InIndex index) const;
  const Shape &outShape(OutIndex index) const;
};
}  // namespace popart
