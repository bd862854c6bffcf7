"""Checkpoint directories: `model.safetensors` + `config.json` + `tokenizer.json` + `manifest.json`,
and optionally a trained vocoder (`vocoder.safetensors` + `vocoder.json`, model/neural_vocoder.py).

The manifest records a SHA-256 per file so a truncated or bit-flipped download is caught
at load time with an error that names the file, rather than as garbage audio in a call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model import neural_vocoder
from model.config import ConfigError, GateConfig, ModelConfig, get_preset
from model.interaction import InteractionModel
from model.neural_vocoder import NeuralVocoder, VocoderError
from model.tokenizer import Tokenizer, TokenizerError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
MANIFEST = "manifest.json"
VOCODER_FILES = (neural_vocoder.WEIGHTS, neural_vocoder.CONFIG)  # optional; with them sessions use it
# Heads added after checkpoints were shipped; an older checkpoint loads with them zeroed and
# unused (the turn head only acts when the config's gate sets `voice`).
LATER_HEADS = ("turn_head.",)
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file at fault."""


@dataclass
class Checkpoint:
    config: ModelConfig
    model: InteractionModel
    tokenizer: Tokenizer
    source: str = ""  # the directory it came from, or "random:<preset>"
    trained: bool = True
    vocoder: NeuralVocoder | None = None  # None: streaming Griffin-Lim (model/vocoder.py)


def load_or_random(
    path: str | Path | None, preset: str, *, device: str | torch.device = "cpu", seed: int = 0
) -> Checkpoint:
    """The checkpoint at `path` if there is one, else the preset with random weights.

    A directory that exists but does not load is an error, never a silent fallback."""
    if path is not None and Path(path).exists():
        return load_checkpoint(path, device=device)
    cfg = get_preset(preset)
    torch.manual_seed(seed)
    model = InteractionModel(cfg).to(device).eval()
    return Checkpoint(
        config=cfg, model=model, tokenizer=Tokenizer.default(cfg.vocab_size), source=f"random:{preset}", trained=False
    )


def save_checkpoint(
    path: str | Path, model: InteractionModel, tokenizer: Tokenizer, *, dtype: torch.dtype | None = None
) -> Path:
    """Write a checkpoint directory. `dtype` (e.g. bfloat16) shrinks a shipped checkpoint;
    loading casts back to the model's dtype."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": str(FORMAT_VERSION)})
    (out / CONFIG).write_text(model.cfg.to_json() + "\n")
    tokenizer.save(out / TOKENIZER)
    files = (WEIGHTS, CONFIG, TOKENIZER, *(f for f in VOCODER_FILES if (out / f).is_file()))
    manifest = {"format": FORMAT_VERSION, "sha256": {f: _sha256(out / f) for f in files}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_config(path: str | Path) -> ModelConfig:
    file = Path(path) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (a checkpoint directory holds {CONFIG}, {WEIGHTS}, {TOKENIZER})")
    try:
        return ModelConfig.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{file}: not a valid model config: {e}") from e


def write_gate(path: str | Path, gate: GateConfig) -> ModelConfig:
    """Store calibrated speak-gate thresholds in a checkpoint's config.json and re-checksum it
    in the manifest (the weights are untouched). The checkpoint must verify before and after."""
    root = Path(path)
    _verify_manifest(root)
    cfg = dataclasses.replace(load_config(root), gate=gate)
    (root / CONFIG).write_text(cfg.to_json() + "\n")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["sha256"][CONFIG] = _sha256(root / CONFIG)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _verify_manifest(root)
    return cfg


def write_vocoder(path: str | Path, net: NeuralVocoder) -> None:
    """Ship a trained vocoder in a checkpoint directory and checksum it in the manifest. The
    checkpoint must verify before and after."""
    root = Path(path)
    _verify_manifest(root)
    net.vc.check_features(load_config(root))
    neural_vocoder.save(root, net)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["sha256"].update({f: _sha256(root / f) for f in VOCODER_FILES})
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _verify_manifest(root)


def _load_vocoder(root: Path, cfg: ModelConfig, hashes: dict[str, str]) -> NeuralVocoder | None:
    present = [f for f in VOCODER_FILES if (root / f).is_file()]
    if not present:
        return None
    unlisted = [f for f in VOCODER_FILES if f not in hashes]
    if unlisted:  # an unverified network would speak to every caller
        raise CheckpointError(f"{root / unlisted[0]}: not listed in {MANIFEST} (ship it with write_vocoder)")
    try:
        net = neural_vocoder.load(root)
        net.vc.check_features(cfg)
    except VocoderError as e:
        raise CheckpointError(str(e)) from e
    return net


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a checkpoint directory")
    hashes = _verify_manifest(root)
    cfg = load_config(root)
    vocoder = _load_vocoder(root, cfg, hashes)
    try:
        tokenizer = Tokenizer.load(root / TOKENIZER)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"{root / TOKENIZER}: vocab of {tokenizer.vocab_size} exceeds vocab_size {cfg.vocab_size} in {CONFIG}"
        )
    weights = root / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from e
    model = InteractionModel(cfg).to(device)
    expected = model.state_dict()
    for k in set(expected) - set(state):
        if k.startswith(LATER_HEADS):  # a head added after this checkpoint: neutral (zero) logits
            state[k] = torch.zeros_like(expected[k])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape mismatch for {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)} from {CONFIG}")
        raise CheckpointError(f"{weights}: does not match {CONFIG}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    neural_vocoder.attach(cfg, vocoder)  # every session of this model speaks with it (SessionState.new)
    return Checkpoint(config=cfg, model=model.eval(), tokenizer=tokenizer, source=str(root), vocoder=vocoder)


def _verify_manifest(root: Path) -> dict[str, str]:
    file = root / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        manifest = json.loads(file.read_text())
        hashes = dict(manifest["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: not a valid manifest: {e}") from e
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{file}: format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}")
    for name, digest in hashes.items():
        f = root / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (corrupt or modified after saving)")
    return hashes


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
