"""Train the neural vocoder (model/neural_vocoder.py) on the assistant voice of the dialogues.

    python -m model.train.vocoder --data data/synth/train --out runs/vocoder --minutes 60 \\
        [--steps N] [--preset tiny] [--clips 800] [--resume] [--log train.log] [--ship-to checkpoints/tiny]

Data: channel 0 (the assistant) of each dialogue wav, around the spans where it speaks
(alignments, speaker SPEAKER_MAIN) plus some silence on either side. Input = the exact
features the model learns to predict (`log_mel_offline` of the waveform), augmented so that
the vocoder holds up on the model's imperfect mels: passed through the dMel bins the model
feeds back (`quantize`/`dequantize`), Gaussian noise, a blur over time or frequency.

Crops are `--frames` mel frames; the loss skips the first `--warmup` frames, whose left
context (zeros at the crop start) is not what streaming sees mid-call. Loss: multi-resolution
STFT (spectral convergence + log-magnitude L1) + log-mel L1; no adversary. The schedule
(warmup, cosine decay) runs on progress = max(step / steps, elapsed / minutes), so a
time-bounded run still anneals. One thread by default (`--threads`): the machine is shared.

Writes `last.pt` (resumable), `best/` and `last/` (vocoder.safetensors + vocoder.json, the
best by a fixed validation set without augmentation), and one log line every `--log-every`
steps. `--ship-to` then writes the best weights into a checkpoint directory (bf16, checksummed
in its manifest: model/checkpoint.py `write_vocoder`); `--ship-only` does just that.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import ModelConfig
from model.dmel import dequantize, log_mel_offline, mel_filterbank, quantize
from model.neural_vocoder import NeuralVocoder, VocoderConfig, get_preset, save

SPEAKER = "SPEAKER_MAIN"
CHANNEL = 0
RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))  # (n_fft = window, hop) of the STFT losses
# log-magnitude floor: well below the model's silence level (|X| ~ 0.01 at its log_mel_min), so
# exact digital silence in the recordings does not dominate the loss
_FLOOR = 1e-3


@dataclass
class Clip:
    audio: Tensor  # (N,) float32, channel 0
    mel: Tensor  # (N // hop, n_mels) log_mel_offline of it
    starts: list[int]  # crop start frames whose loss region covers speech


def speech_spans(
    alignments: Sequence[Sequence[object]], speaker: str = SPEAKER, gap: float = 1.0
) -> list[tuple[float, float]]:
    """The speaker's words merged into (start, end) seconds, words closer than `gap` joined."""
    spans: list[tuple[float, float]] = []
    for _, times, spk in alignments:
        if spk != speaker:
            continue
        t0, t1 = (float(t) for t in times)  # type: ignore[attr-defined]
        if spans and t0 - spans[-1][1] < gap:
            spans[-1] = (spans[-1][0], max(spans[-1][1], t1))
        else:
            spans.append((t0, t1))
    return spans


def load_clip(wav: Path, cfg: ModelConfig, frames: int, warmup: int, silence: float = 0.3) -> Clip | None:
    """A dialogue's assistant channel, its log-mel, and the crop starts around its speech."""
    audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    if sr != cfg.sample_rate:
        raise ValueError(f"{wav}: expected {cfg.sample_rate} Hz, got {sr}")
    x = torch.from_numpy(np.ascontiguousarray(audio[:, CHANNEL]))
    x = F.pad(x, (0, -len(x) % cfg.hop_length))
    mel = log_mel_offline(x, cfg)
    spans = speech_spans(json.loads(wav.with_suffix(".json").read_text())["alignments"])
    per_s = cfg.sample_rate / cfg.hop_length
    n = mel.shape[0]
    starts: set[int] = set()
    for t0, t1 in spans:
        lo = int((t0 - silence) * per_s) - frames + 1  # the loss region [a+warmup, a+frames) overlaps it
        hi = int((t1 + silence) * per_s) - warmup
        starts.update(range(max(1, lo), min(n - frames, hi) + 1))
    if not starts:
        return None
    return Clip(audio=x, mel=mel, starts=sorted(starts))


def load_clips(wavs: Sequence[Path], cfg: ModelConfig, frames: int, warmup: int) -> list[Clip]:
    clips = [load_clip(w, cfg, frames, warmup) for w in wavs]
    return [c for c in clips if c is not None]


def crop(clip: Clip, a: int, frames: int, hop: int) -> tuple[Tensor, Tensor]:
    """Mel frames [a, a+frames) and the audio they synthesize: samples [(a-1)*hop, (a+frames-1)*hop)."""
    return clip.mel[a : a + frames], clip.audio[(a - 1) * hop : (a + frames - 1) * hop]


def augment(mel: Tensor, cfg: ModelConfig, gen: torch.Generator) -> Tensor:
    """(B, T, M) log-mel -> the same with per-item imperfections like the model's."""
    out = mel.clone()
    B = mel.shape[0]
    r = torch.rand(B, 4, generator=gen)
    for b in range(B):
        x = out[b]
        if r[b, 0] < 0.25:  # the dMel bins the model feeds back: a step of (max-min)/bins
            x = dequantize(quantize(x, cfg), cfg)
        if r[b, 1] < 0.3:  # a smeared spectrogram, as a flow head's average is
            k = torch.tensor([0.25, 0.5, 0.25])
            if r[b, 3] < 0.5:
                x = F.conv1d(F.pad(x.T[:, None], (1, 1), mode="replicate"), k.view(1, 1, 3))[:, 0].T
            else:
                x = F.conv1d(F.pad(x[:, None], (1, 1), mode="replicate"), k.view(1, 1, 3))[:, 0]
        if r[b, 2] < 0.5:
            sigma = float(torch.rand((), generator=gen)) * 0.3
            x = x + sigma * torch.randn(x.shape, generator=gen)
        out[b] = x.clamp(cfg.log_mel_min, cfg.log_mel_max)
    return out


def _stft_mag(x: Tensor, n_fft: int, hop: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True).abs()


def losses(pred: Tensor, target: Tensor, fb: Tensor) -> dict[str, Tensor]:
    """Multi-resolution STFT (spectral convergence + log-magnitude L1) and log-mel L1 of (B, N) audio."""
    sc, mag = pred.new_zeros(()), pred.new_zeros(())
    for n_fft, hop in RESOLUTIONS:
        p, t = _stft_mag(pred, n_fft, hop), _stft_mag(target, n_fft, hop)
        sc = sc + torch.linalg.norm(t - p, dim=(1, 2)).sum() / torch.linalg.norm(t, dim=(1, 2)).sum().clamp(min=1e-5)
        mag = mag + (p.clamp(min=_FLOOR).log() - t.clamp(min=_FLOOR).log()).abs().mean()
    sc, mag = sc / len(RESOLUTIONS), mag / len(RESOLUTIONS)
    p, t = _stft_mag(pred, 1024, 200), _stft_mag(target, 1024, 200)  # (B, 513, frames)
    mel_p = torch.einsum("bkt,km->bmt", p.square(), fb).clamp(min=_FLOOR**2).log()
    mel_t = torch.einsum("bkt,km->bmt", t.square(), fb).clamp(min=_FLOOR**2).log()
    mel = (mel_p - mel_t).abs().mean()
    return {"sc": sc, "mag": mag, "mel": mel, "total": sc + mag + 0.5 * mel}


class Batches:
    def __init__(self, clips: list[Clip], cfg: ModelConfig, frames: int, batch: int, seed: int) -> None:
        self.clips, self.cfg, self.frames, self.batch = clips, cfg, frames, batch
        self.rng = random.Random(seed)

    def next(self) -> tuple[Tensor, Tensor]:
        mels, audio = [], []
        for _ in range(self.batch):
            clip = self.rng.choice(self.clips)
            m, a = crop(clip, self.rng.choice(clip.starts), self.frames, self.cfg.hop_length)
            mels.append(m)
            audio.append(a)
        return torch.stack(mels), torch.stack(audio)


def fixed_set(clips: list[Clip], cfg: ModelConfig, frames: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    return Batches(clips, cfg, frames, n, seed).next()


def lr_at(progress: float, base: float, warmup_frac: float = 0.03, floor: float = 0.02) -> float:
    if progress < warmup_frac:
        return base * progress / warmup_frac
    p = min(1.0, (progress - warmup_frac) / (1 - warmup_frac))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def loss_of(net: NeuralVocoder, mel: Tensor, audio: Tensor, warmup: int, fb: Tensor) -> dict[str, Tensor]:
    skip = warmup * net.vc.hop_length
    pred = net.synthesize(mel)
    return losses(pred[:, skip:], audio[:, skip:], fb)


def train(
    wavs: Sequence[Path],
    out: Path,
    *,
    vc: VocoderConfig,
    minutes: float,
    steps: int,
    batch: int = 16,
    frames: int = 80,
    warmup: int = 24,
    lr: float = 1.5e-3,
    seed: int = 0,
    val_clips: int = 24,
    eval_every: int = 200,
    log_every: int = 10,
    log: Path | None = None,
    resume: bool = False,
    augment_input: bool = True,
) -> dict[str, float]:
    """Train and return the final figures {"step", "train_loss", "best_val", "minutes"}."""
    cfg = ModelConfig()
    vc.check_features(cfg)
    out.mkdir(parents=True, exist_ok=True)
    logf = (log or out / "train.log").open("a")

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, file=logf, flush=True)
        print(line, file=sys.stderr, flush=True)

    wavs = list(wavs)
    n_val = min(val_clips, max(1, len(wavs) // 5)) if len(wavs) > 1 else 0
    t_load = time.perf_counter()
    train_clips = load_clips(wavs[n_val:], cfg, frames, warmup)
    val = load_clips(wavs[:n_val], cfg, frames, warmup) if n_val else []
    if not train_clips:
        raise ValueError("no clip with assistant speech in the training data")
    say(
        f"data: {len(train_clips)} train clips, {len(val)} validation clips, "
        f"{sum(len(c.starts) for c in train_clips)} crop starts, loaded in {time.perf_counter() - t_load:.0f} s"
    )
    torch.manual_seed(seed)
    net = NeuralVocoder(vc)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
    fb = mel_filterbank(cfg)
    gen = torch.Generator().manual_seed(seed)
    batches = Batches(train_clips, cfg, frames, batch, seed)
    val_set = fixed_set(val or train_clips, cfg, frames, 32, seed + 1)
    step, elapsed, best = 0, 0.0, float("inf")
    ckpt = out / "last.pt"
    if resume and ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        step, elapsed, best = saved["step"], saved["elapsed"], saved["best"]
        gen.set_state(saved["gen"])
        batches.rng.setstate(saved["rng"])
        say(f"resumed at step {step}, {elapsed / 60:.1f} min, best val {best:.4f}")
    say(f"model: {sum(p.numel() for p in net.parameters()):,} parameters, config {vc}")

    def progress() -> float:
        return max(step / steps if steps else 0.0, elapsed / (minutes * 60) if minutes else 0.0)

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            v = loss_of(net, val_set[0], val_set[1], warmup, fb)
        net.train()
        return float(v["total"])

    def checkpoint() -> None:
        save(out / "last", net)
        state = {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed, "best": best}
        torch.save({**state, "gen": gen.get_state(), "rng": batches.rng.getstate()}, ckpt)

    net.train()
    window: list[float] = []
    t_window = time.perf_counter()
    loss: dict[str, Tensor] = {}
    while progress() < 1.0:
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(progress(), lr)
        mel, audio = batches.next()
        if augment_input:
            mel = augment(mel, cfg, gen)
        loss = loss_of(net, mel, audio, warmup, fb)
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t0
        window.append(float(loss["total"].detach()))
        if step % log_every == 0:
            per = (time.perf_counter() - t_window) / log_every
            t_window = time.perf_counter()
            left = (1.0 - progress()) * (elapsed / max(progress(), 1e-9))
            parts = " ".join(f"{k} {float(v.detach()):.4f}" for k, v in loss.items() if k != "total")
            say(
                f"step {step} loss {sum(window) / len(window):.4f} ({parts}) lr {opt.param_groups[0]['lr']:.2e} "
                f"{per:.2f} s/step elapsed {elapsed / 60:.1f} min ETA {left / 60:.1f} min"
            )
            window.clear()
        if step % eval_every == 0:
            v = validate()
            if v < best:
                best = v
                save(out / "best", net)
            say(f"step {step} validation {v:.4f} (best {best:.4f})")
            checkpoint()
    v = validate()
    if v < best:
        best = v
        save(out / "best", net)
    checkpoint()
    say(f"done: step {step}, {elapsed / 60:.1f} min, last validation {v:.4f}, best {best:.4f}")
    logf.close()
    last = float(loss["total"].detach()) if loss else float("nan")
    return {"step": step, "train_loss": last, "best_val": best, "minutes": elapsed / 60}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="dialogue wavs with alignments (model/data layout)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=0.0, help="time budget (0 = none)")
    ap.add_argument("--steps", type=int, default=0, help="step budget (0 = none)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clips", type=int, default=800, help="dialogues to read (the first few are validation)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--ship-to", type=Path, help="a checkpoint directory to ship the best weights in")
    ap.add_argument("--ship-only", action="store_true", help="ship --out's best weights, do not train")
    args = ap.parse_args(argv)
    if args.ship_only:
        if args.ship_to is None:
            ap.error("--ship-only needs --ship-to")
        return ship(args.out, args.ship_to)
    if not args.minutes and not args.steps:
        ap.error("give --minutes or --steps")
    torch.set_num_threads(args.threads)
    wavs = sorted(args.data.glob("*.wav"))
    if not wavs:
        print(f"error: {args.data}: no .wav files", file=sys.stderr)
        return 2
    wavs = random.Random(args.seed).sample(wavs, min(args.clips, len(wavs)))
    train(
        wavs, args.out, vc=get_preset(args.preset), minutes=args.minutes, steps=args.steps, batch=args.batch,
        frames=args.frames, warmup=args.warmup, lr=args.lr, seed=args.seed, log=args.log,
        log_every=args.log_every, eval_every=args.eval_every, resume=args.resume,
    )  # fmt: skip
    return ship(args.out, args.ship_to) if args.ship_to is not None else 0


def ship(out: Path, checkpoint: Path) -> int:
    from model.checkpoint import write_vocoder
    from model.neural_vocoder import load

    write_vocoder(checkpoint, load(out / "best"))
    print(f"shipped {out / 'best'} in {checkpoint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
