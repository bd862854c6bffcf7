from __future__ import annotations

import dataclasses
import json

import pytest

from model.config import PRESETS, ConfigError, ModelConfig, count_params, get_preset
from model.interaction import InteractionModel
from tests.model.conftest import micro_config


@pytest.mark.parametrize(
    "cfg",
    [PRESETS["tiny"], micro_config(), micro_config(shared_expert_dim=0, n_experts=3, top_k=1)],
    ids=["tiny", "micro", "no-shared"],
)
def test_count_matches_instantiated_model(cfg: ModelConfig) -> None:
    model = InteractionModel(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())


def test_active_counts_only_top_k_experts() -> None:
    cfg = PRESETS["tiny"]
    c = count_params(cfg)
    per_expert = 3 * cfg.d_model * cfg.expert_dim
    assert c.total - c.active == cfg.n_layers * (cfg.n_experts - cfg.top_k) * per_expert


def test_tiny_fits_cpu_budget() -> None:
    assert count_params(PRESETS["tiny"]).total <= 30_000_000


def test_tml_small_matches_published_count() -> None:
    c = count_params(PRESETS["tml-small"])
    assert abs(c.total / 276e9 - 1) <= 0.03, c.total
    assert abs(c.active / 12e9 - 1) <= 0.03, c.active


def test_unknown_preset_names_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*tiny"):
        get_preset("huge")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("n_kv_heads", 3, "n_kv_heads"), ("top_k", 99, "top_k"), ("micro_turn_ms", 210, "micro_turn_ms")],
)
def test_invalid_config_names_field(field: str, value: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(PRESETS["tiny"], **{field: value})


def test_json_round_trip() -> None:
    cfg = PRESETS["small"]
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="unknown config fields: bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
