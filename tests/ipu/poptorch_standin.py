"""A recording stand-in for PopTorch 3.x (and PopDist) that runs models eagerly on the CPU.

Tests inject it as ``sys.modules["poptorch"]`` to check the IPU trainer's wiring
without the Poplar SDK. It implements only the calls ipu_snn makes, with the
public 3.x signatures (see ipu_snn/ipu/README.md), records every call, and
mimics the semantics the trainer relies on:

* ``DataLoader`` yields batches of micro-batch x device iterations x replicas x
  gradient accumulation samples;
* a training model splits such a batch into micro-batches, averages the
  gradients over accumulation steps and replicas (ReductionType.Mean), steps the
  optimizer once per device iteration, and returns its outputs summed
  (OutputMode.Sum) or concatenated (OutputMode.All);
* executors compile on first call and must be detached before another one
  attaches, as on real IPUs;
* an optimizer's hyperparameters (its learning rates) are the IPU's copies: they
  are uploaded when the model compiles, by ``setOptimizer`` while attached (else
  when it next attaches), and by the state a ``load_state_dict`` gave it, which
  is written after them whenever the model attaches; ``state_dict`` reads them
  back (with ``ipu_state``/``ipu_param``, as PopTorch 3.x's
  ``_poplar_executor.py`` and ``optim.py`` do), and a training step runs with them;
* ``custom_op`` runs the ipu_snn PopART network op (``Network``) as the network op's own Poplar
  graph on the host interpreter (ipu_snn.ipu.interpreter: its forward program, and its backward
  program in an autograd Function standing in for PopART's autodiff through ``NetworkGrad``),
  checks ``example_outputs`` against what it computed, and records each call's name, attributes
  and input shapes in ``custom_op_calls``. The carried outputs, which only the grad op reads, are
  read from the graph after the forward program, at the shapes and types the call gives them (the
  interpreter's backward build uses the forward build's carried tensors themselves, as the grad op's
  GradOpx does).
It says nothing about what PopART or an IPU would compute.
"""

from __future__ import annotations

import enum
import importlib.machinery
import math
import types

import torch


class OutputMode(enum.IntEnum):
    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class ReductionType(enum.IntEnum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class _Section:
    """A group of options (opts.Training, opts.TensorLocations, opts._Popart) that records its calls."""

    def __init__(self, owner: "Options", name: str, methods: tuple[str, ...]):
        self._owner, self._name, self._methods = owner, name, methods

    def __getattr__(self, method):
        if method not in self._methods:
            raise AttributeError(f"stand-in poptorch.Options.{self._name} has no {method}")

        def call(*args):
            self._owner.record(f"{self._name}.{method}", args)
            return self

        return call


class Options:
    def __init__(self, log: list, replication: int = 1):
        self.log, self.own = log, []  # every Options' calls, and this one's
        self.values = {"replication_factor": replication, "device_iterations": 1, "gradient_accumulation": 1,
                       "output_mode": OutputMode.Default}
        self.Training = _Section(self, "Training", ("gradientAccumulation", "accumulationAndReplicationReductionType"))

    def record(self, name, args):
        self.log.append((name, args))
        self.own.append((name, args))
        if name == "Training.gradientAccumulation":
            self.values["gradient_accumulation"] = args[0]

    def _set(self, name, args, key=None):
        self.record(name, args)
        if key:
            self.values[key] = args[0]
        return self

    def replicationFactor(self, n):
        return self._set("replicationFactor", (n,), "replication_factor")

    def deviceIterations(self, n):
        return self._set("deviceIterations", (n,), "device_iterations")

    def outputMode(self, mode):
        return self._set("outputMode", (mode,), "output_mode")

    def randomSeed(self, seed):
        assert isinstance(seed, int)
        return self._set("randomSeed", (seed,))

    def useIpuModel(self, use):
        return self._set("useIpuModel", (use,))

    def setAvailableMemoryProportion(self, proportions):
        return self._set("setAvailableMemoryProportion", (proportions,))

    def enableExecutableCaching(self, path):
        return self._set("enableExecutableCaching", (path,))

    def calls(self) -> dict:
        return {name: args for name, args in self.own}


def identity_loss(x, reduction):
    return {"sum": x.sum, "mean": x.mean}.get(reduction, lambda: x)()


# ---------------------------------------------------------------- custom ops


def _network(bits, *params, sizes, recurrent, thresholds, resets, surrogates, scales, listed, learn_decay,
             learn_threshold, kinds, adapt_strengths, readout, samples_per_pass, tape_slots, local_slots,
             offchip_slots, actions):
    """The Network op on the host interpreter (built once per spec and shape, as a compiled graph is)."""
    from ipu_snn.ipu.interpreter import HostNetwork, LayerSpec, network_trace

    batch, steps = bits.shape[0], bits.shape[1]
    layers = [LayerSpec(*row) for row in zip(sizes, map(bool, recurrent), thresholds, resets, surrogates, scales,
                                             map(bool, listed), map(bool, learn_decay), map(bool, learn_threshold),
                                             kinds, adapt_strengths)]
    key = (batch, steps, params[0].shape[0], tuple(layers), readout, samples_per_pass, tuple(actions), tape_slots,
           local_slots, offchip_slots)
    if key not in _HOSTS:
        _HOSTS.clear()
        steps_actions = [tuple(actions[i:i + 6]) for i in range(0, len(actions), 6)]
        _HOSTS[key] = HostNetwork.from_actions(batch, steps, params[0].shape[0], layers, readout, samples_per_pass,
                                               steps_actions, tape_slots, local_slots, offchip_slots)
    host = _HOSTS[key]
    out = network_trace(host, bits, params)
    counts = [torch.from_numpy(host.read(f"spike_count.{i}", (batch, n))).to(out.dtype) for i, n in enumerate(sizes)]
    return [out, *counts]


def _carried(examples):
    """The op's carried outputs as the graph holds them after its forward program (read checks each size)."""
    host = next(iter(_HOSTS.values()))
    dtypes = {torch.float32: "float32", torch.uint8: "uint8"}
    return [torch.from_numpy(host.read(f"carried.{k}", tuple(e.shape), dtype=dtypes[e.dtype]))
            for k, e in enumerate(examples)]


_HOSTS: dict = {}
CUSTOM_OPS = {"Network": _network}
custom_op_calls: list[dict] = []


def custom_op(inputs, name, domain, domain_version, example_outputs, attributes=None):
    assert (domain, domain_version) == ("ipu_snn", 1), (domain, domain_version)
    attributes = attributes or {}
    for key, value in attributes.items():  # as poptorch.custom_op checks them (python/ops.py:820-833)
        assert isinstance(key, str) and isinstance(value, (int, float, str, list, tuple)), (key, value)
        if isinstance(value, (list, tuple)):
            assert all(type(v) is type(value[0]) for v in value), (key, value)
    outputs = CUSTOM_OPS[name](*inputs, **attributes)
    # outputs only the grad op reads: the network op's carried state, read from the graph
    outputs += _carried(example_outputs[len(outputs):])
    for out, example in zip(outputs, example_outputs, strict=True):
        assert out.shape == example.shape and out.dtype == example.dtype, (name, out.shape, example.shape)
    custom_op_calls.append({"name": name, "attributes": dict(attributes), "inputs": len(inputs),
                            "shapes": [tuple(t.shape) for t in inputs]})
    return outputs


# ---------------------------------------------------------------- optimizers


def _poptorch_optimizer(base):
    class Optimizer(base):
        def __init__(self, params, *args, max_grad_norm=None, **kwargs):
            super().__init__(params, *args, **kwargs)
            self.max_grad_norm = math.inf if max_grad_norm is None else max_grad_norm
            self.ipu_lr = None  # the learning rates the IPU holds (None: not compiled)
            self.ipu_copy = None  # the last IPU state read back or loaded; written when the model attaches
            self.host_stale = False  # the IPU has stepped since the last read
            self.used_lr = []  # the IPU's learning rates at each step

        def read_ipu(self):
            # the steps run on the host here, so the optimizer's tensors are torch's own state
            self.ipu_copy = {"ipu_state": {f"{i}.{k}": v.clone() for i, s in super().state_dict()["state"].items()
                                           for k, v in s.items()},
                             "ipu_param": {f"learningRate___group{g}": torch.tensor(lr)
                                           for g, lr in enumerate(self.ipu_lr)}}
            self.host_stale = False

        def write_ipu(self):
            for key, lr in (self.ipu_copy or {"ipu_param": {}})["ipu_param"].items():
                self.ipu_lr[int(key.rsplit("group", 1)[1])] = float(lr)

        def upload(self):
            self.ipu_lr = [group["lr"] for group in self.param_groups]

        def state_dict(self):
            if self.host_stale:
                self.read_ipu()
            return {**(self.ipu_copy or {"ipu_state": None, "ipu_param": None}), **super().state_dict()}

        def load_state_dict(self, state):
            if not ("ipu_state" in state and "ipu_param" in state):
                raise RuntimeError("Only IPU optimizer states can be loaded onto the IPU.")
            super().load_state_dict(state)
            self.ipu_copy = {"ipu_state": state["ipu_state"], "ipu_param": state["ipu_param"]}

        def step(self, closure=None):
            host = [group["lr"] for group in self.param_groups]
            for group, lr in zip(self.param_groups, self.ipu_lr):
                group["lr"] = lr
            self.used_lr.append(tuple(self.ipu_lr))
            super().step(closure)
            for group, lr in zip(self.param_groups, host):
                group["lr"] = lr
            self.host_stale = True

    Optimizer.__name__ = base.__name__
    return Optimizer


optim = types.SimpleNamespace(Adam=_poptorch_optimizer(torch.optim.Adam), AdamW=_poptorch_optimizer(torch.optim.AdamW),
                              SGD=_poptorch_optimizer(torch.optim.SGD))


# ---------------------------------------------------------------- data and executors


class DataLoader(torch.utils.data.DataLoader):
    def __init__(self, options, dataset, batch_size=1, shuffle=False, num_workers=0, drop_last=True,
                 auto_distributed_partitioning=True, **kwargs):
        v = options.values
        self.combined = batch_size * v["device_iterations"] * v["replication_factor"] * v["gradient_accumulation"]
        self.auto_distributed_partitioning = auto_distributed_partitioning
        super().__init__(dataset, batch_size=self.combined, shuffle=shuffle, num_workers=num_workers,
                         drop_last=drop_last, **kwargs)


class Executor:
    attached: "Executor | None" = None  # one set of IPUs: only one executor at a time

    def __init__(self, model, options, optimizer=None, training=True):
        self.model, self.options, self.optimizer, self.training = model, options, optimizer, training
        self.compiled = False
        self.calls = 0
        self.destroyed = False
        self.optimizer_dirty = False  # set while detached: the new hyperparameters go up on the next attach
        if training:
            assert optimizer is not None
        else:
            assert options.values["gradient_accumulation"] == 1, "gradient accumulation set for inference"

    def _attach(self, compiling=False):
        if Executor.attached is not None and Executor.attached is not self:
            raise RuntimeError("stand-in IPUs are in use by another model: detach it first")
        Executor.attached = self
        if self.training:
            if compiling or self.optimizer_dirty:
                self.optimizer.upload()
                self.optimizer_dirty = False
            self.optimizer.write_ipu()

    def isCompiled(self):
        return self.compiled

    def detachFromDevice(self):
        if not self.compiled:
            raise RuntimeError("Model has not been compiled or has been destroyed.")
        if Executor.attached is not self:
            raise RuntimeError("Device is not attached")
        if self.training and self.optimizer.host_stale:
            self.optimizer.read_ipu()
        Executor.attached = None

    def attachToDevice(self):
        if not self.compiled:
            raise RuntimeError("Model has not been compiled or has been destroyed.")
        if Executor.attached is self:
            raise RuntimeError("Device is already attached")
        self._attach()

    def setOptimizer(self, optimizer):
        assert self.training and optimizer is self.optimizer, "the stand-in takes back its own optimizer only"
        if Executor.attached is self:
            optimizer.upload()
        else:
            self.optimizer_dirty = True

    def copyWeightsToHost(self):
        pass

    def destroy(self):
        if Executor.attached is self:
            Executor.attached = None
        self.compiled = False
        self.destroyed = True

    def __call__(self, *args):
        if not self.compiled:
            self._attach(compiling=True)
            self.compiled = True
        elif Executor.attached is not self:
            self.attachToDevice()
        self.calls += 1
        v = self.options.values
        steps, per_step = v["device_iterations"], v["replication_factor"] * v["gradient_accumulation"]
        n = args[0].shape[0]
        assert n % (steps * per_step) == 0, f"batch {n} is not a multiple of {steps} x {per_step}"
        micro = n // (steps * per_step)
        outputs = []
        for step in range(steps):
            if self.training:
                self.model.train()
                self.optimizer.zero_grad()
            for m in range(per_step):
                part = slice((step * per_step + m) * micro, (step * per_step + m + 1) * micro)
                with torch.set_grad_enabled(self.training):
                    out = self.model(*[a[part] for a in args])
                out = out if isinstance(out, tuple) else (out,)
                if self.training:
                    (out[0] / per_step).backward()
                outputs.append(tuple(o.detach() for o in out))
            if self.training:
                if math.isfinite(self.optimizer.max_grad_norm):
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optimizer.max_grad_norm)
                self.optimizer.step()
        mode = v["output_mode"]
        if mode == OutputMode.Sum:
            result = tuple(torch.stack(column).sum(0) for column in zip(*outputs))
        elif mode in (OutputMode.All, OutputMode.Default):
            result = tuple(torch.cat([o.reshape(-1, *o.shape[1:]) if o.dim() else o.reshape(1) for o in column])
                           for column in zip(*outputs))
        else:
            result = outputs[-1]
        return result[0] if len(result) == 1 else result


def trainingModel(model, options=None, optimizer=None):
    return Executor(model, options, optimizer, training=True)


def inferenceModel(model, options=None):
    return Executor(model, options, training=False)


# ---------------------------------------------------------------- the modules


def make_poptorch() -> types.ModuleType:
    """A fresh stand-in ``poptorch`` module; ``module.log`` holds every Options call of every Options."""
    module = types.ModuleType("poptorch")
    module.__spec__ = importlib.machinery.ModuleSpec("poptorch", None)
    module.log = []
    module.options_made = []

    def make_options():
        opts = Options(module.log)
        module.options_made.append(opts)
        return opts

    module.Options = make_options
    module.training_models = []

    def training_model(model, options=None, optimizer=None):
        executor = trainingModel(model, options, optimizer)
        module.training_models.append(executor)
        return executor

    for name in ("OutputMode", "ReductionType", "identity_loss", "custom_op", "optim", "DataLoader",
                 "inferenceModel"):
        setattr(module, name, globals()[name])
    module.trainingModel = training_model
    Executor.attached = None
    custom_op_calls.clear()
    return module


def make_popdist(poptorch: types.ModuleType, *, instance: int, instances: int, local_replicas: int) -> types.ModuleType:
    """A stand-in ``popdist`` as PopRun sets it up for one instance."""
    module = types.ModuleType("popdist")
    module.__spec__ = importlib.machinery.ModuleSpec("popdist", None)
    module.isPopdistEnvSet = lambda: True
    module.init = lambda: None
    module.getInstanceIndex = lambda: instance
    module.getNumInstances = lambda: instances
    module.getNumLocalReplicas = lambda: local_replicas
    module.getNumTotalReplicas = lambda: local_replicas * instances

    def make_options():
        opts = Options(poptorch.log, replication=local_replicas)
        poptorch.options_made.append(opts)
        return opts

    module.poptorch = types.SimpleNamespace(Options=make_options)
    return module
