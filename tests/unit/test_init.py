"""model.init: the weight distributions each choice promises, and the membrane fluctuations the
fluctuation-driven one aims for (Rossbroich et al. 2022)."""

import math

import pytest
import torch

from ipu_snn.config import ModelConfig, dump_config, validate_config
from ipu_snn.errors import ConfigError
from ipu_snn.network import build_network


def net(init, layers, n_in=200):
    torch.manual_seed(0)
    return build_network(ModelConfig.model_validate({"layers": layers, "init": init}), n_in, 4, dt=1e-3)


@pytest.mark.parametrize("kind", ["lif", "rlif"])
def test_fluctuation_init_gives_the_membrane_its_target_spread(kind):
    xi, rate = 4.0, 0.05  # the threshold four standard deviations up: spikes (and resets) stay rare
    model = net({"name": "fluctuation", "xi": xi, "rate": rate}, [{"type": kind, "size": 64, "beta": 0.95}])
    inputs = (torch.rand(16, 600, 200, generator=torch.Generator().manual_seed(1)) < rate).float()
    with torch.no_grad():
        rec = model(inputs, record=0).record["layer0"]
    v = rec.membranes[200:]  # past the start's transient
    # each neuron's fluctuation over time (its mean is its own: the weights are drawn, not their sum)
    std = v.std(0).pow(2).mean().sqrt().item()
    # the recurrent weights' share (0.1) assumes the layer fires at `rate` too; it fires at its own rate
    share = 0.1 if kind == "rlif" else 0.0
    target = math.sqrt((1 - share) + share * rec.spikes.mean().item() / rate) / xi
    assert abs(std - target) < 0.1 * target, (std, target)


def test_uniform_and_normal_are_scaled_by_the_fan_in():
    layers = [{"type": "rlif", "size": 50}]
    w = net({"name": "uniform", "gain": 2.0}, layers).layers[0].fc.weight
    bound = 2.0 / math.sqrt(200)
    assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    layer = net({"name": "normal"}, layers).layers[0]
    assert abs(layer.fc.weight.std().item() - 1 / math.sqrt(200)) < 0.05 / math.sqrt(200)
    assert abs(layer.rec.weight.std().item() - 1 / math.sqrt(50)) < 0.05 / math.sqrt(50)
    assert not layer.fc.bias.any()


def test_init_settings_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="xi do not apply to init uniform"):
        ModelConfig.model_validate({"layers": [{"type": "lif", "size": 4}], "init": {"name": "uniform", "xi": 2}})
    cfg = validate_config({"model": {"layers": [{"type": "lif", "size": 4}], "init": "fluctuation"}})
    assert cfg.model.init.xi == 2.0 and cfg.model.init.gain is None
    import yaml

    assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg
    with pytest.raises(ConfigError, match="model.init"):
        validate_config({"model": {"layers": [{"type": "lif", "size": 4}], "init": {"name": "orthogonal"}}})
