from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.interaction import InteractionModel
from model.session import InteractionSession
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config


@pytest.fixture
def saved(tmp_path: Path, micro_model: InteractionModel, tokenizer: Tokenizer) -> Path:
    return save_checkpoint(tmp_path / "ckpt", micro_model, tokenizer)


def test_round_trip_is_bitwise(saved: Path, micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    ck = load_checkpoint(saved)
    assert ck.config == micro_model.cfg
    a, b = micro_model.state_dict(), ck.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert ck.tokenizer.to_str() == tokenizer.to_str()
    # and the loaded model streams the same audio
    audio = np.sin(np.arange(3200) / 7).astype(np.float32) * 0.2
    out_a = InteractionSession(micro_model, tokenizer, seed=2).step_audio(audio)
    out_b = InteractionSession(ck.model, ck.tokenizer, seed=2).step_audio(audio)
    assert out_a.audio == out_b.audio and out_a.text_tokens == out_b.text_tokens


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "manifest.json"])
def test_missing_file_is_named(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(saved)


def test_corrupt_weights_are_named(saved: Path) -> None:
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checksum mismatch"):
        load_checkpoint(saved)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_modified_config_or_tokenizer_is_named(saved: Path, name: str) -> None:
    """Every file the manifest lists is checked, not only the weights. The edit keeps the file
    valid and its meaning the same, so the checksum is the only thing that can catch it."""
    f = saved / name
    original = f.read_bytes()
    f.write_text(json.dumps(json.loads(original), indent=3) + "\n")
    assert f.read_bytes() != original
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)}: checksum mismatch"):
        load_checkpoint(saved)
    # re-checksummed, the edited file loads: only the checksum told the difference
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256(f.read_bytes()).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    load_checkpoint(saved)


def test_truncated_weights_without_manifest_check(saved: Path) -> None:
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    manifest = json.loads((saved / "manifest.json").read_text())
    del manifest["sha256"]["model.safetensors"]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable"):
        load_checkpoint(saved)


def test_weights_from_another_config_are_rejected(tmp_path: Path, saved: Path, tokenizer: Tokenizer) -> None:
    other = save_checkpoint(tmp_path / "other", InteractionModel(micro_config(d_model=96, head_dim=24)), tokenizer)
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["sha256"]["model.safetensors"] = json.loads((other / "manifest.json").read_text())["sha256"][
        "model.safetensors"
    ]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not match config\.json: shape mismatch"):
        load_checkpoint(saved)


def test_bad_config_is_named(saved: Path) -> None:
    cfg = json.loads((saved / "config.json").read_text())
    cfg["n_kv_heads"] = 3
    (saved / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["sha256"].pop("config.json")
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"config\.json: not a valid model config.*n_kv_heads"):
        load_checkpoint(saved)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path / "nope")


def test_bf16_export_loads_as_fp32(tmp_path: Path, micro_model: InteractionModel, tokenizer: Tokenizer) -> None:
    path = save_checkpoint(tmp_path / "bf16", micro_model, tokenizer, dtype=torch.bfloat16)
    small = (path / "model.safetensors").stat().st_size
    full = (save_checkpoint(tmp_path / "fp32", micro_model, tokenizer) / "model.safetensors").stat().st_size
    assert small < 0.6 * full
    ck = load_checkpoint(path)
    w = ck.model.state_dict()["text_head.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, micro_model.state_dict()["text_head.weight"].to(torch.bfloat16).float())


def test_checkpoint_from_before_the_turn_head_loads_with_it_zeroed(saved: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = saved / "model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("turn_head.")}
    save_file(state, str(weights))
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["sha256"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    ck = load_checkpoint(saved)
    assert float(ck.model.turn_head.weight.abs().sum() + ck.model.turn_head.bias.abs().sum()) == 0.0
    # any other missing tensor is still an error
    del state["text_head.weight"]
    save_file(state, str(weights))
    manifest["sha256"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"text_head\.weight"):
        load_checkpoint(saved)
