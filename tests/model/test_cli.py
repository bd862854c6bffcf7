from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.checkpoint import save_checkpoint
from model.config import count_params, get_preset
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from signaling.cli import main
from tests.model.conftest import micro_config


def test_info_preset_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "tml-small", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    c = count_params(get_preset("tml-small"))
    assert info["total_params"] == c.total and info["active_params"] == c.active
    assert info["name"] == "tml-small" and info["n_experts"] == 256


def test_info_checkpoint(tmp_path: Path, tokenizer: Tokenizer, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = micro_config()
    save_checkpoint(tmp_path / "ck", InteractionModel(cfg), tokenizer)
    assert main(["info", "--checkpoint", str(tmp_path / "ck"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["d_model"] == cfg.d_model and info["total_params"] == count_params(cfg).total


def test_info_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["info", "--checkpoint", str(tmp_path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err
