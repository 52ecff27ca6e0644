"""Run configuration: a pydantic schema, YAML loading and ``a.b=c`` overrides.

Every error names the full path of the offending field (``model.layers.0.beta``)
and the reason, so a researcher can fix the YAML without reading a traceback.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .bptt.registry import SCHEDULES, ScheduleKind
from .errors import ConfigError
from .neuron.models import MODELS, NeuronModel
from .neuron.surrogates import SURROGATES


class _Strict(BaseModel):
    # Unknown keys are almost always typos; silently ignoring them would train
    # a different model than the one the researcher wrote down. Strict types for
    # the same reason: `epochs: true` is not 1, nor `size: 2.5` 2 (a float field
    # still takes an int).
    # No NaN or infinity anywhere: no field means "unbounded" by it, and one would only crash later.
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


#: The float32 range (the training dtype): the largest finite value and the smallest positive one.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.401298464324817e-45


def fits_float32(value: float) -> bool:
    """Whether ``value`` is finite in float32 and not rounded to zero there (zero itself fits)."""
    return value == 0 or FLOAT32_TINY <= abs(value) <= FLOAT32_MAX


#: Seeds reach numpy's legacy seeding, which takes 32 bits; checked here so `validate` catches them.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


# ----------------------------------------------------------------------------- model


class SurrogateConfig(_Strict):
    name: Literal[tuple(SURROGATES)] = "fast_sigmoid"  # the surrogate table's names
    scale: PositiveFloat = 10.0  # a sharpness: the derivative's width is about 1/scale (ipu_snn/neuron/surrogates.py)


def _decay_from(value: float | None, tau: float | None, dt: float, default: float) -> float:
    if value is not None:
        return value
    if tau is not None:
        return math.exp(-dt / tau)
    return default


class _Decay(_Strict):
    """A leak given either as ``beta`` (per step) or as ``tau`` (seconds)."""

    beta: float | None = Field(None, gt=0.0, le=1.0)
    tau: PositiveFloat | None = None
    learn_decay: bool = False

    @model_validator(mode="after")
    def _beta_xor_tau(self):
        if self.beta is not None and self.tau is not None:
            raise ValueError("give either beta or tau, not both")
        return self

    def resolve_beta(self, dt: float, default: float) -> float:
        return _decay_from(self.beta, self.tau, dt, default)


class _SpikingLayer(_Decay):
    """The fields of every spiking layer; each neuron model adds its own (`_layer_config`)."""

    size: PositiveInt
    threshold: PositiveFloat = 1.0
    # a per-neuron threshold parameter [size], initialised from threshold and trained (alif: its base threshold)
    learn_threshold: bool = False
    reset: Literal["subtract", "zero"] = "subtract"
    # Detaching the reset from the graph is the usual choice for surrogate-gradient
    # training (Zenke & Vogels 2021): it keeps gradients from cancelling themselves.
    detach_reset: bool = True
    surrogate: SurrogateConfig = SurrogateConfig()
    # dropout on this layer's output spikes to the next layer and the readout, in training (ipu_snn/dropout.py)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _decay_xor_tau(self):
        for decay in self.neuron.decays:
            if getattr(self, decay.name) is not None and getattr(self, decay.tau) is not None:
                raise ValueError(f"give either {decay.name} or {decay.tau}, not both")
        return self

    @property
    def neuron(self) -> NeuronModel:
        """The layer's neuron model (the registry entry of its ``type``)."""
        return MODELS[self.type]

    @property
    def is_recurrent(self) -> bool:
        """Whether the layer has recurrent weights: its model's, or its ``recurrent`` field's choice."""
        fixed = self.neuron.recurrent
        return self.recurrent if fixed is None else fixed

    def resolve_decays(self, dt: float) -> dict[str, float]:
        """The model's decays after beta, per step, by name (``rho`` for alif)."""
        return {d.name: _decay_from(getattr(self, d.name), getattr(self, d.tau), dt, d.default)
                for d in self.neuron.decays}

    def param_values(self) -> dict[str, float]:
        """The model's scalar parameters after threshold, by name (``adapt_strength`` for alif)."""
        return {p.name: getattr(self, p.name) for p in self.neuron.params}


def _layer_config(model: NeuronModel) -> type[_SpikingLayer]:
    """A model's layer section: the common fields, its ``type``, its decays and parameters."""
    fields: dict[str, Any] = {"type": (Literal[model.name], ...)}
    if model.recurrent is None:
        fields["recurrent"] = (bool, model.recurrent_default)
    for decay in model.decays:
        fields[decay.name] = (float | None, Field(None, gt=0.0, le=1.0))
        fields[decay.tau] = (PositiveFloat | None, None)
    for param in model.params:
        fields[param.name] = (float, Field(param.default, ge=param.minimum))
    name = "".join(part.title() for part in model.name.split("_")).upper() + "LayerConfig"
    return create_model(name, __base__=_SpikingLayer, __module__=__name__, **fields)


#: layer type -> its config section, one per entry of the neuron-model registry
LAYER_CONFIGS: dict[str, type[_SpikingLayer]] = {name: _layer_config(model) for name, model in MODELS.items()}
LayerConfig = Annotated[Union[tuple(LAYER_CONFIGS.values())], Field(discriminator="type")]
LAYER_TYPES = tuple(MODELS)


class ReadoutConfig(_Decay):
    # How the LI membrane trace over time becomes class logits.
    reduce: Literal["max", "mean", "last", "sum"] = "max"


class InitConfig(_Strict):
    """``model.init``: how the spiking layers' weights are drawn (ipu_snn/init.py; biases start at 0, the
    readout keeps its own). default: N(0, (2 threshold)^2 / fan-in) into a layer, N(0, 1 / n) recurrent;
    uniform: U(-gain / sqrt(fan-in), gain / sqrt(fan-in)), torch.nn.Linear's; normal: N(0, gain^2 / fan-in);
    fluctuation: Rossbroich et al. 2022's, centred normal weights that give each neuron's membrane a
    standard deviation of threshold / xi for presynaptic spikes at ``rate`` per step, ``recurrent_share``
    of its variance from the recurrent weights."""

    name: Literal["default", "uniform", "normal", "fluctuation"] = "default"
    gain: PositiveFloat | None = None  # uniform, normal (default 1)
    # fluctuation: the threshold's distance from the mean membrane in standard deviations (default 2),
    # presynaptic spikes per step of the inputs and the layers (default 0.05), and the recurrent weights'
    # share of a recurrent layer's membrane variance (default 0.1)
    xi: PositiveFloat | None = None
    rate: float | None = Field(None, gt=0.0, le=1.0)
    recurrent_share: float | None = Field(None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _settings_of_the_name(self):
        defaults = {"uniform": {"gain": 1.0}, "normal": {"gain": 1.0}, "default": {},
                    "fluctuation": {"xi": 2.0, "rate": 0.05, "recurrent_share": 0.1}}[self.name]
        given = {k for k in ("gain", "xi", "rate", "recurrent_share") if getattr(self, k) is not None}
        if given - set(defaults):
            raise ValueError(f"{', '.join(sorted(given - set(defaults)))} do not apply to init {self.name}")
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        return self


class ModelConfig(_Strict):
    # empty only with from_nir, whose graph gives the layers (ipu_snn.interop.nir.resolve_from_nir)
    layers: list[LayerConfig] = Field(default_factory=list)
    readout: ReadoutConfig = ReadoutConfig()
    # a NIR graph (.nir) that gives the layers, the readout and their initial weights
    from_nir: str | None = None
    # seconds per step with which the graph's continuous-time constants are discretised; default: the data's
    # step. snnTorch writes and reads its graphs for a step of 1e-4 s whatever the data's (docs/nir.md)
    nir_dt: PositiveFloat | None = None
    # a graph that ends in a spiking layer (snnTorch's, Norse's): spike_count keeps it spiking and takes its spike
    # counts as the logits; membrane reads its membrane as the leaky-integrator readout (docs/nir.md)
    nir_output: Literal["spike_count", "membrane"] = "spike_count"
    # Multiply spikes by weights as gather-adds over spike lists (ipu_snn.ops) instead of dense matrix
    # products: the binary input, recurrent, layer-to-layer and readout products. auto (default): where the
    # spike density is at most the crossover measured on this machine (ipu_snn.calibration; a network built
    # without one gets ipu_snn.ops.policy.DEFAULT_CROSSOVERS), decided per window, exact either way; true:
    # always, with lists of sparse_capacity; false: dense.
    sparse: Union[bool, Literal["auto"]] = "auto"
    sparse_capacity: float = Field(0.25, gt=0.0, le=1.0)  # spike-list length as a fraction of the neurons
    sparse_overflow: Literal["error", "drop_and_count"] = "error"
    # The gradient of a layer's spikes (docs/architecture.md, "The listed backward"). auto: exact; where a
    # layer's surrogate has bounded support (triangle, boxcar) and its products are sparse, formed only at the
    # neurons that fired or have a non-zero surrogate derivative (the only ones it can reach), wherever their
    # density is below the measured crossover; else the dense adjoint. dense: the dense adjoint always.
    # spikes: APPROXIMATE for any surrogate of unbounded support: only at the neurons that fired (and with
    # sparse_grad_min_derivative the near-threshold ones), in lists of sparse_capacity
    sparse_grad: Literal["auto", "dense", "spikes"] = "auto"
    # with sparse_grad: spikes, also list the neurons that did not fire but whose surrogate derivative exceeds
    # this fraction of its peak (0: every neuron of non-zero derivative). None: spikes only.
    sparse_grad_min_derivative: float | None = Field(None, ge=0.0, lt=1.0)
    # Run each layer's time loop with the fused kernels (ipu_snn.neuron.window): a few bytes per
    # neuron-step kept for backward, no Python per step on the CPU. auto: wherever supported (a detached
    # reset); true: the same, and an error naming what prevents it; false: the plain autograd loop.
    fused: Union[bool, Literal["auto"]] = "auto"
    # dtype of the surrogate derivatives (and, with learned decays, the pre-step state) the fused loop keeps:
    # float32 is exact; float16 / bfloat16 halve that memory at a bounded error (docs/benchmarks/training_step.md)
    fused_saved_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    init: InitConfig = InitConfig()

    @field_validator("init", mode="before")
    @classmethod
    def _init_by_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "sparse_near" in data:
            raise ValueError("model.sparse_near was renamed model.sparse_grad_min_derivative (with sparse_grad: "
                             "spikes: also list neurons whose surrogate derivative exceeds this fraction of its "
                             "peak); sparse_grad: auto, the default, is the exact listed backward")
        return data

    @model_validator(mode="after")
    def _check(self):
        if not self.layers and self.from_nir is None:
            raise ValueError("model.layers needs at least one layer (or model.from_nir: a NIR graph that gives them)")
        if self.layers and self.from_nir is not None:
            raise ValueError("give model.layers or model.from_nir, not both: the NIR graph gives the layers")
        if self.nir_dt is not None and self.from_nir is None:
            raise ValueError("model.nir_dt applies only with model.from_nir")
        if self.sparse_grad_min_derivative is not None and self.sparse_grad != "spikes":
            raise ValueError("sparse_grad_min_derivative lists near-threshold neurons for sparse_grad: spikes; "
                             "set both, or leave sparse_grad_min_derivative unset (sparse_grad: auto lists every "
                             "neuron of non-zero surrogate derivative by itself)")
        return self


# ------------------------------------------------------------------------------ data


class SyntheticConfig(_Strict):
    """Parameters of the built-in SHD-format synthetic dataset."""

    n_train: PositiveInt = 4000
    n_test: PositiveInt = 1000
    n_classes: int = Field(20, ge=2)
    n_channels: PositiveInt = 700
    duration: PositiveFloat = 1.0
    jitter: NonNegativeFloat = 0.01
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    noise_rate: NonNegativeFloat = 2.0
    seed: Seed = 0


class EventFiles(_Strict):
    """The files of ``dataset: events`` (SHD layout), relative to ``data.path`` when that is set."""

    train: str
    test: str
    valid: str | None = None  # without it, data.val_split of train is held out


DATASETS_WITH_PATH = ("shd", "ssc", "nmnist")


class AugmentConfig(_Strict):
    """Event augmentations of the training split (ipu_snn.data.augment), seeded by training.seed, new each epoch."""

    time_jitter: NonNegativeFloat = 0.0  # seconds: each event's time moves by a normal draw of this std
    channel_shift: NonNegativeInt = 0  # each sample's channels move together by a whole draw in [-k, k]
    event_drop: float = Field(0.0, ge=0.0, lt=1.0)  # each event is dropped with this probability


class DataConfig(_Strict):
    # synthetic: built in; shd / ssc: the public files in data.path; events: any SHD-layout files (data.files);
    # nmnist: the N-MNIST binary files (data.path holds Train/ and Test/); tonic: a Tonic dataset on disk
    dataset: Literal["synthetic", "shd", "ssc", "events", "nmnist", "tonic"] = "synthetic"
    path: str | None = None
    files: EventFiles | None = None  # events only
    # events: channels and classes, checked against the files; default: what the files say
    n_channels: PositiveInt | None = None
    n_classes: int | None = Field(None, ge=2)
    spatial_pooling: PositiveInt = 1  # nmnist, tonic: sum k x k pixel blocks into one channel per polarity
    name: str | None = None  # tonic: the dataset class, as in tonic.datasets (NMNIST, SHD, DVSGesture, ...)
    root: str | None = None  # tonic: the save_to folder the dataset was downloaded into by Tonic
    steps: PositiveInt | None = None
    dt: PositiveFloat | None = None
    max_time: PositiveFloat = 1.0
    channel_pooling: PositiveInt = 1
    binary: bool = True
    batch_size: PositiveInt = 64
    # "global": batch_size samples per optimizer step however many processes run,
    # so results do not depend on the launch; "per_device": batch_size per process.
    batch_scope: Literal["global", "per_device"] = "global"
    val_split: float = Field(0.1, ge=0.0, lt=1.0)
    cache_dir: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    augment: AugmentConfig = AugmentConfig()  # training split only; every event dataset

    @model_validator(mode="after")
    def _check(self):
        if self.steps is not None and self.dt is not None:
            raise ValueError("give either steps or dt, not both")
        if self.dataset in DATASETS_WITH_PATH and not self.path:
            held = "its Train/ and Test/ folders" if self.dataset == "nmnist" else "its .h5 files"
            raise ValueError(f"dataset '{self.dataset}' needs data.path: the folder holding {held}")
        if (self.dataset == "events") != (self.files is not None):
            raise ValueError("dataset 'events' needs data.files: {train: FILE, test: FILE}" if self.files is None
                             else f"data.files applies to dataset 'events', not '{self.dataset}'")
        if self.dataset != "events" and (self.n_channels is not None or self.n_classes is not None):
            raise ValueError(f"data.n_channels and data.n_classes apply to dataset 'events', not '{self.dataset}'")
        if self.dataset == "tonic" and (self.name is None or self.root is None):
            raise ValueError("dataset 'tonic' needs data.name (a tonic.datasets class) and data.root (its save_to)")
        if self.dataset != "tonic" and (self.name is not None or self.root is not None):
            raise ValueError(f"data.name and data.root apply to dataset 'tonic', not '{self.dataset}'")
        if self.spatial_pooling > 1 and self.dataset not in ("nmnist", "tonic"):
            raise ValueError(f"data.spatial_pooling applies to datasets nmnist and tonic, not '{self.dataset}'")
        return self

    @property
    def num_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        if self.dt is not None:
            return max(1, round(self.max_time / self.dt))
        return 100

    @property
    def step_seconds(self) -> float:
        return self.dt if self.dt is not None else self.max_time / self.num_steps


# -------------------------------------------------------------------------- training


#: training.loss names (ipu_snn.losses): cross-entropy of the readout; of the last spiking layer's spike counts;
#: squared error of those counts to target rates; cross-entropy of its first-spike times
LOSS_NAMES = ("readout_ce", "count_ce", "count_mse", "first_spike_ce")


class LossConfig(_Strict):
    """``training.loss``: a name, or a mapping with the name and its settings (docs/python_api.md)."""

    name: Literal["readout_ce", "count_ce", "count_mse", "first_spike_ce"] = "readout_ce"
    # count_mse: the target spikes per step of the correct class's neurons and of the others' (default 0.8, 0.2)
    correct_rate: float | None = Field(None, ge=0.0, le=1.0)
    incorrect_rate: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _rates_for_mse(self):
        if self.name != "count_mse" and (self.correct_rate is not None or self.incorrect_rate is not None):
            raise ValueError(f"correct_rate and incorrect_rate apply to loss count_mse, not {self.name}")
        if self.name == "count_mse":
            self.correct_rate = 0.8 if self.correct_rate is None else self.correct_rate
            self.incorrect_rate = 0.2 if self.incorrect_rate is None else self.incorrect_rate
        return self


class RateBound(_Strict):
    """One entry of ``training.rate_regularization``: bounds on a spiking layer's firing rates (spikes per
    step), each a squared hinge with its weight (Zenke & Vogels 2021): below ``lower`` per neuron, above
    ``upper`` for the layer's mean."""

    layer: int = Field(ge=0)
    lower: float | None = Field(None, ge=0.0, le=1.0)
    lower_weight: NonNegativeFloat = 1.0
    upper: float | None = Field(None, ge=0.0, le=1.0)
    upper_weight: NonNegativeFloat = 1.0

    @model_validator(mode="after")
    def _a_bound(self):
        if self.lower is None and self.upper is None:
            raise ValueError("give lower, upper or both (spikes per step)")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) is above upper ({self.upper})")
        return self


class EarlyStopping(_Strict):
    """``training.early_stopping``: stop when the validation metric has not improved by ``min_delta``
    for ``patience`` epochs."""

    patience: PositiveInt = 5
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    min_delta: NonNegativeFloat = 0.0


class TrainingConfig(_Strict):
    epochs: PositiveInt = 10
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_step_size: PositiveInt = 10
    lr_gamma: float = Field(0.5, gt=0.0, le=1.0)
    grad_clip: PositiveFloat | None = None
    grad_accumulation: PositiveInt = 1  # micro-batches per optimizer step (per process)
    seed: Seed = 0
    tensorboard: bool = False
    keep_checkpoints: PositiveInt = 2
    loss: LossConfig = LossConfig()
    rate_regularization: list[RateBound] = Field(default_factory=list)
    # keep the checkpoint of the best validation epoch (by early_stopping.metric, else val_loss) in best/
    keep_best: bool = False
    early_stopping: EarlyStopping | None = None

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_by_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("lr", "weight_decay", "grad_clip")
    @classmethod
    def _fits_float32(cls, value: float | None) -> float | None:
        # the optimizer works in the parameters' float32: a value that overflows or rounds to 0 there
        # would crash optimizer.step or silently do nothing
        if value is not None and not fits_float32(value):
            raise ValueError(f"does not fit the float32 the optimizer works in (magnitudes from "
                             f"{FLOAT32_TINY:.1e} to {FLOAT32_MAX:.1e})")
        return value


class _BPTTShared(_Strict):
    """The ``bptt`` fields every schedule has."""

    budget_gib: PositiveFloat | None = None  # local memory the plan may use; default: the device's
    # Steps per window of the time loop (ipu_snn.executor): the schedules count windows, and window
    # boundaries are where checkpoints go. Default: the planner's choice.
    window: PositiveInt | None = None


class AutoBPTT(_BPTTShared):
    """``bptt.schedule: auto``: the planner picks the fastest schedule of the registry that fits."""

    schedule: Literal["auto"] = "auto"


def _bptt_section(kind: type[ScheduleKind]) -> type:
    # one config class per schedule of the registry: its own parameters and the shared fields
    return types.new_class(f"{kind.__name__}BPTT", (_BPTTShared, kind), {},
                           lambda ns: ns.update({"__module__": __name__, "__doc__": kind.__doc__}))


BPTT_SECTIONS: dict[str, type] = {name: _bptt_section(kind) for name, kind in SCHEDULES.items()} | {"auto": AutoBPTT}


def _bptt_tag(value: Any) -> Any:
    # a section that names no schedule is store_all's, as before schedules had parameters of their own
    if isinstance(value, dict):
        return value.get("schedule", "store_all")
    return getattr(value, "schedule", None)


#: How BPTT trades memory for recomputation (ipu_snn.bptt.registry): ``bptt: {schedule: revolve, slots: 4}``.
#: A field the named schedule does not have is an error; ``budget_gib`` and ``window`` belong to every one.
BPTTConfig = Annotated[Union[tuple(Annotated[cls, Tag(name)] for name, cls in BPTT_SECTIONS.items())],
                       Discriminator(_bptt_tag, custom_error_type="bptt_schedule",
                                     custom_error_message="unknown schedule; known: " + ", ".join(BPTT_SECTIONS))]
BPTT_SCHEDULE_NAMES = tuple(BPTT_SECTIONS)


class DistributedConfig(_Strict):
    """Runs of several processes (torchrun)."""

    # seconds any process waits for the others (joining, each collective) before the run ends with exit 2
    # naming the rank: a peer that died or was stopped ends every rank instead of hanging them
    timeout_s: PositiveFloat = 300.0


class IPUConfig(_Strict):
    """PopTorch settings; used only with device ipu / ipu-model."""

    replication: PositiveInt = 1  # replicas when not launched by poprun
    device_iterations: PositiveInt = 1  # steps run on the device per host call
    available_memory_proportion: float | None = Field(None, gt=0.0, le=1.0)
    executable_cache: str | None = None


class Config(_Strict):
    model: ModelConfig
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    bptt: BPTTConfig = Field(default_factory=lambda: BPTT_SECTIONS["store_all"]())
    ipu: IPUConfig = IPUConfig()
    distributed: DistributedConfig = DistributedConfig()
    # ipu-emulator: the CPU, with every spike matmul run tile by tile on the IPU tile emulator (small models)
    device: Literal["cpu", "cuda", "ipu", "ipu-model", "ipu-emulator"] = "cpu"
    out_dir: str | None = None

    @field_validator("out_dir")
    @classmethod
    def _expand_home(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("an empty name is no folder; leave out_dir out to use runs/<config name>")
        return None if value is None else os.path.expanduser(value)

    @model_validator(mode="after")
    def _training_fits_model(self):
        n = len(self.model.layers)
        for i, bound in enumerate(self.training.rate_regularization):
            if n and bound.layer >= n:  # (a from_nir model's layers are checked when the graph is read)
                raise ValueError(f"training.rate_regularization.{i}.layer: the model has spiking layers "
                                 f"0..{n - 1}, not {bound.layer}")
        ipu = ("ipu", "ipu-model", "ipu-emulator")
        if self.device in ipu and (self.training.loss.name != "readout_ce" or self.training.rate_regularization):
            raise ValueError("training.loss other than readout_ce and training.rate_regularization run on cpu "
                             f"and cuda, not yet on {self.device}")
        if self.device in ipu and any(layer.dropout for layer in self.model.layers):
            raise ValueError(f"model.layers.*.dropout runs on cpu and cuda, not yet on {self.device}")
        return self


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a config from a YAML file, apply overrides, and validate it.

    Parameters
    ----------
    path : str or Path
        The YAML file.
    overrides : sequence of str
        ``a.b=c`` items, applied in order (``model.layers.0.size=256``; values are read as YAML).

    Returns
    -------
    Config
        The validated config, every default filled in.

    Raises
    ------
    ConfigError
        The file is missing or unreadable, an override names no field, or a value is invalid; the
        message names the field.
    """
    raw = read_yaml(path)
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("from_nir"), str):
        # a graph named in the file is found next to the file (one named by an override, from the working folder)
        graph = Path(model["from_nir"]).expanduser()
        model["from_nir"] = str(graph if graph.is_absolute() else Path(path).parent / graph)
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                          "save the config as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, ...)")
    return raw


class _Loader(yaml.SafeLoader):
    """YAML as users write it: ``1e-3`` is a number (YAML 1.1 read it as a string, YAML 1.2 does not)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def parse_yaml(text: str, source: str, at: tuple = ()) -> Any:
    """The value of a YAML document (placed at the field path ``at``); a ConfigError naming ``source`` if
    it is not valid YAML or sets a key twice (plain YAML keeps the last one silently)."""
    _check_flow_depth(text, source)
    loader = None
    try:
        loader = _Loader(text)  # reads the first characters already: a control character fails here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, at, source, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read (a config is a few levels deep)") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        if "digits" not in str(exc):
            raise
        raise ConfigError(f"{source}: an integer of more than {sys.get_int_max_str_digits()} digits; no field "
                          "takes one") from None
    finally:
        if loader is not None:
            loader.dispose()


#: Brackets open at once beyond which a document is refused before it is parsed (the parser recurses per level).
MAX_FLOW_DEPTH = 100


def _check_flow_depth(text: str, source: str) -> None:
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                raise ConfigError(f"{source}: nested too deeply to read (over {MAX_FLOW_DEPTH} open brackets; a "
                                  "config is a few levels deep)")
        elif ch in "]}":
            depth = max(depth - 1, 0)


def _check_unique_keys(node: yaml.Node, path: tuple, source: str, seen_nodes: set) -> None:
    if id(node) in seen_nodes:  # an alias: checked where its anchor is
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(f"{source}: {'.'.join(path + (key,))} is given twice (lines {lines[key]} "
                                      f"and {line}); YAML would keep only the last, so remove one")
                lines[key] = line
            _check_unique_keys(value_node, path + (str(key),), source, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, path + (str(i),), source, seen_nodes)


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.0.c=value`` in a nested dict; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected the form a.b=c")
    parts = key.split(".")
    value = parse_yaml(text, f"override '{item}'", tuple(parts)) if text.strip() else None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{item}': {where} is a list of {len(node)} entries; '{part}' is not an index in it")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override '{item}': {where} is a value, not a section")


def validate_config(raw: dict, source: str = "config") -> Config:
    """Validate a config given as a dict (what a YAML file holds).

    Parameters
    ----------
    raw : dict
        The config's sections (``model``, ``data``, ``training``, ``bptt``, ``device``, ...).
    source : str
        What the errors say the config came from.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Naming each invalid field.
    """
    try:
        return Config.model_validate(raw)
    except RecursionError:  # a structure built in Python, nested deeper than any config
        raise ConfigError(f"{source}: invalid config: nested too deeply to read") from None
    except ValidationError as exc:
        lines = [format_error(err) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(f"  {line}" for line in lines)) from None


def format_error(err: dict) -> str:
    loc = _strip_union_tags(err["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = allowed_fields(err["loc"][:-1])
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known fields: {', '.join(allowed)})"
        schedule = _schedule_tag(err["loc"])
        if schedule is not None:  # a field of another schedule, or of none
            return f"{field}: schedule '{schedule}' has no such field{hint}"
        return f"{field}: unknown field{hint}"
    if err["type"] == "bptt_schedule":
        given = err["input"].get("schedule") if isinstance(err.get("input"), dict) else err.get("input")
        return f"{field}.schedule: unknown schedule {given!r}; known: {', '.join(BPTT_SCHEDULE_NAMES)}"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{field}: required field is missing"
    shown = err.get("input")
    if isinstance(shown, (str, int, float, bool)) or shown is None:
        return f"{field}: {message} (got {shown!r})"
    return f"{field}: {message}"


def _schedule_tag(loc: tuple) -> str | None:
    """The schedule whose section ``loc`` is in (pydantic puts the union's tag after ``bptt``)."""
    return loc[1] if len(loc) > 2 and loc[0] == "bptt" and loc[1] in BPTT_SECTIONS else None


def _strip_union_tags(loc: tuple) -> tuple:
    # pydantic puts the discriminator value into the path of a tagged union
    # member (model.layers.0.rlif.size, bptt.revolve.slots); users wrote model.layers.0.size, bptt.slots.
    out: list = []
    for part in loc:
        if part in LAYER_TYPES and out and isinstance(out[-1], int):
            continue
        if part in BPTT_SECTIONS and out == ["bptt"]:
            continue
        out.append(part)
    return tuple(out)


def allowed_fields(loc: tuple) -> list[str]:
    """Field names of the section at ``loc`` (as pydantic gives it, union tags included), best effort (for
    hints)."""
    cls: Any = Config
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if not isinstance(part, int):
            cls = _unwrap(cls)
            if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
                return []
            cls = cls.model_fields[part].annotation
        if parts and isinstance(parts[0], str) and _tagged_member(cls, parts[0]) is not None:
            cls = _tagged_member(cls, parts.pop(0))
    cls = _unwrap(cls)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(cls.model_fields)
    return []


def _tagged_member(tp: Any, tag: str) -> Any:
    """The member of a tagged union (possibly in a list) whose tag is ``tag``, else None."""
    while typing.get_origin(tp) in (Annotated, list):
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return None
    for member in typing.get_args(tp):
        member = _unwrap(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name in ("type", "schedule"):
                info = member.model_fields.get(name)
                if info is not None and typing.get_args(info.annotation) == (tag,):
                    return member
    return None


def _unwrap(tp: Any) -> Any:
    # list[X], X | None and Annotated[Union[...]] all lead to a model class;
    # for a union of layer types the shared fields are what matter for hints.
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin is list:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0]
        else:
            return tp


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
