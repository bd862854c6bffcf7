from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import PRESETS, ModelConfig
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer


def micro_config(**overrides: object) -> ModelConfig:
    """The tiny preset shrunk further so CPU tests run in seconds; same code paths."""
    base = dict(
        name="micro",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        n_experts=4,
        top_k=2,
        expert_dim=64,
        shared_expert_dim=32,
        window=48,
        n_sinks=4,
        flow_dim=64,
        flow_depth=2,
        time_embed_dim=32,
    )
    base.update(overrides)
    return dataclasses.replace(PRESETS["tiny"], **base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.default(PRESETS["tiny"].vocab_size)


@pytest.fixture
def micro_model() -> InteractionModel:
    torch.manual_seed(0)
    return InteractionModel(micro_config()).eval()
