"""Trainer: teacher-forced interleaved sequences, AdamW + cosine schedule, resumable.

Everything random is keyed on (seed, step): which clips and crops a step sees and the flow
noise, so a run resumed from its state file continues exactly the curve it left.

Out directory:
  train_state.pt    model + optimizer + step (resume point, written every `ckpt_every` steps)
  checkpoint/       the latest model as a checkpoint directory (model/checkpoint.py)
  log.jsonl         one JSON line per logged step
  loss.png          loss curves
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from infra.logging import get_logger
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from model.train.dataset import Clip, Example, build_example, collate, list_clips, load_clip
from model.train.objective import compute_losses

log = get_logger(__name__)
STATE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 4
    crop_turns: int = 40  # 8 s of dialogue per sequence
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200


def lr_at(step: int, t: TrainConfig) -> float:
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(
        self,
        cfg: ModelConfig,
        tcfg: TrainConfig,
        data_dir: Path,
        out_dir: Path,
        *,
        init: Path | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.tcfg = tcfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(tcfg.seed)
        if init is not None:  # fine-tuning: the checkpoint's architecture and tokenizer win
            ck = load_checkpoint(init)
            self.model, self.tokenizer = ck.model, ck.tokenizer
        else:
            self.model = InteractionModel(cfg)
            self.tokenizer = tokenizer or Tokenizer.default(cfg.vocab_size)
        self.cfg = self.model.cfg
        self.model.train()
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        other = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=tcfg.lr,
            betas=(0.9, 0.95),
        )
        self.step = 0
        self.clips: list[Clip] = [load_clip(p) for p in list_clips(data_dir)]
        self.history: list[dict[str, float]] = []

    # resume --------------------------------------------------------------------------------
    def save_state(self) -> None:
        tmp = self.out / (STATE + ".tmp")
        torch.save(
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "optim": self.opt.state_dict(),
                "tcfg": asdict(self.tcfg),
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(self.out / STATE)  # atomic: a crash mid-save never leaves a torn state
        save_checkpoint(self.out / "checkpoint", self.model, self.tokenizer)

    def try_resume(self) -> bool:
        f = self.out / STATE
        if not f.exists():
            return False
        state = torch.load(f, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optim"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        # steps logged after the last save are redone: keep the log in step with the state
        (self.out / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
        log.info("train.resumed", step=self.step, state=str(f))
        return True

    # data -----------------------------------------------------------------------------------
    def batch_for(self, step: int) -> Example:
        rnd = random.Random(self.tcfg.seed * 1_000_003 + step)
        examples = []
        for _ in range(self.tcfg.batch_size):
            clip = self.clips[rnd.randrange(len(self.clips))]
            n_turns = len(clip.user) // self.cfg.turn_samples - 1
            start = rnd.randrange(max(1, n_turns - self.tcfg.crop_turns + 1))
            examples.append(build_example(self.cfg, self.tokenizer, clip, self.tcfg.crop_turns, start))
        return collate(examples)

    # loop ------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        batch = self.batch_for(self.step)
        gen = torch.Generator().manual_seed(self.tcfg.seed * 1_000_003 + self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, self.tcfg)
        losses = compute_losses(self.model, batch, gen)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
        self.opt.step()
        self.step += 1
        rec = {k: float(v.detach()) for k, v in losses.items()}
        return {**rec, "grad_norm": float(grad_norm), "lr": lr_at(self.step - 1, self.tcfg)}

    def run(self, steps: int | None = None, progress: bool = True) -> list[dict[str, float]]:
        """Train until `steps` (default: the config's total); returns the logged history."""
        until = self.tcfg.steps if steps is None else min(self.tcfg.steps, steps)
        bar = tqdm(total=until, initial=self.step, desc="train", unit="step", file=sys.stderr, disable=not progress)
        t0 = time.time()
        while self.step < until:
            rec = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{rec['total']:.3f}")
            if self.step % self.tcfg.log_every == 0 or self.step == until:
                rec = {"step": self.step, "elapsed_s": round(time.time() - t0, 1), **rec}
                self.history.append(rec)
                with (self.out / "log.jsonl").open("a") as f:
                    f.write(json.dumps(rec) + "\n")
            if self.step % self.tcfg.ckpt_every == 0 or self.step == until:
                self.save_state()
                plot_losses(self.history, self.out / "loss.png")
        bar.close()
        return self.history


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, key in zip(axes, ("text", "caption", "flow", "balance"), strict=True):
        ax.plot(steps, [h[key] for h in history])
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
