"""The configuration: round trip through config.json and validation of combinations."""

import json

import pytest

from pyrovae.config import Config, ConfigError


def test_config_round_trip_and_validation(tmp_path):
    cfg = Config(prior="mixture", hidden=[10, 20], capacity=None)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="Did you mean 'vamp'"):
        Config(prior="vampp").validate()
    for bad, msg in [(dict(batch_size=0), "batch_size"), (dict(beta=-1.0), "beta"), (dict(lr=0.0), "lr"),
                     (dict(hidden=[0]), "hidden"), (dict(elbo="iwae"), "num_particles"),
                     (dict(seed=-1), "seed must be an integer from 0 to 2"), (dict(seed=2**32), "seed")]:  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            Config(**bad).validate()


def test_unconditionable_components_are_refused(tmp_path, tiny_data_file, tiny_config):
    from pyrovae.priors import PRIORS, StandardNormal

    class LabelBlind(StandardNormal):  # the VampPrior takes labels now; a prior that cannot
        conditionable = False

    PRIORS["blind"] = LabelBlind
    try:
        with pytest.raises(ConfigError, match="cannot be conditioned"):
            tiny_config(tiny_data_file(tmp_path), prior="blind", conditional=True).validate()
    finally:
        del PRIORS["blind"]
    with pytest.raises(ConfigError, match="set conditional"):
        tiny_config(tiny_data_file(tmp_path), prior="conditional").validate()
