// Mock of <popart/opmanager.hpp> (PopART 3.x): OpDefinition, OpCreatorInfo, OpCreator.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <popart/op.hpp>
namespace popart {
class OpDefinition {
public:
  using DataTypes = std::vector<DataType>;
  struct Input {
    Input(std::string n, DataTypes t, bool _constant = false);
  };
  using Inputs = std::vector<Input>;
  struct Output {
    Output(std::string n, DataTypes t);
  };
  using Outputs = std::vector<Output>;
  struct Attribute {
    Attribute(std::string regex);
  };
  using Attributes = std::map<std::string, Attribute>;
  OpDefinition();
  OpDefinition(Inputs i, Outputs o, Attributes a);
};
using OpDefinitions = std::map<OperatorIdentifier, OpDefinition>;

class OpCreatorInfo {
public:
  const OperatorIdentifier &opid;
  const Op::Settings &settings;
  const Attributes &attributes;
};

class OpManager {
public:
  using OpFactoryFunc = std::function<std::unique_ptr<Op>(const OpCreatorInfo &)>;
};

template <class OP> class OpCreator {
public:
  OpCreator(const OpDefinitions &opDefinitions, OpManager::OpFactoryFunc func,
            bool isPublic = true);
};
}  // namespace popart
