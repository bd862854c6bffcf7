"""Trainer: teacher-forced interleaved sequences, AdamW + cosine schedule, resumable.

Everything random is keyed on (seed, step): which clips and crops a step sees and the flow
noise, so a run resumed from its state file continues exactly the curve it left.

Crops: half of them (`event_crop_p`) are centred on an event of the clip (a reply onset, an
interruption cut, a pause end, a backchannel...): turn-taking is decided in a few hundred ms
around those moments, and uniform crops spend most of their positions on steady speech or
silence. Clips of `whole_scenarios` (timed speech) are always taken whole, since the skill is
keeping time over the whole stretch.

Validation: with a `val_dir`, every `val_every` steps (and at the end of `run`) the mean of each
loss over a fixed set of validation batches (the same crops and flow noise every time) is
logged as `val_<key>`; the model with the lowest `val_<select>` so far is kept in `best/`
(`select` = "total" by default; the recipe selects on "turn", the turn-state loss, because the
held-out split's phrasings are disjoint from training's: its text loss measures content the
model cannot know and rises while timing still improves).

Out directory:
  train_state.pt    model + optimizer + step + best (resume point, every `ckpt_every` steps)
  checkpoint/       the latest model as a checkpoint directory (model/checkpoint.py)
  best/             the model with the lowest val_<select> (only with validation data)
  best.json         {"step", "val_total", "val_<key>"...} of best/
  log.jsonl         one JSON line per logged step
  loss.png          loss curves (validation dashed)
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from infra.logging import get_logger
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from model.train.augment import VoiceAugment
from model.train.dataset import PAD_WEIGHT, Clip, Example, build_example, collate, event_float, list_clips, load_clip
from model.train.objective import compute_losses

log = get_logger(__name__)
STATE = "train_state.pt"
BEST = "best"
BEST_JSON = "best.json"
LOSS_PANELS = ("text", "caption", "flow", "turn", "balance")


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
    val_every: int = 250  # 0: validate only at the end of a run
    select: str = "total"  # the validation loss that picks best/ (a key of compute_losses)
    val_batches: int = 8
    event_crop_p: float = 0.5
    hold_weight: float = PAD_WEIGHT  # <pad> inside a user's pause (model/train/dataset.py)
    augment: VoiceAugment | None = None  # draws each training crop's user a new voice; never validation's
    whole_scenarios: tuple[str, ...] = ("timed_speech",)
    whole_max_turns: int = 100  # 20 s: a whole-clip crop never grows past this


@dataclass(frozen=True)
class Best:
    step: int
    value: float  # val_<select> at that step


def lr_at(step: int, t: TrainConfig) -> float:
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def event_times(clip: Clip) -> list[float]:
    """The moments (seconds) of a clip worth centring a crop on."""
    out: list[float] = []
    for ev in clip.events:
        kind = ev.get("type")
        t = event_float(ev.get("time"))
        if kind == "user_end":
            if t is not None:
                out.append(t + (event_float(ev.get("gap")) or 0.0))  # the reply onset
        elif kind == "interrupt":
            cut = event_float(ev.get("cut"))
            out += [cut] if cut is not None else [t] if t is not None else []
        elif kind == "pause":
            end = event_float(ev.get("end"))
            out += [end] if end is not None else []
        elif kind == "monologue_pause":
            end = event_float(ev.get("end"))
            out += [end] if end is not None else [t] if t is not None else []
        elif kind == "timespeak":
            onsets = ev.get("expected_onsets")
            if isinstance(onsets, Iterable):
                out += [x for x in map(event_float, onsets) if x is not None]
        elif kind in ("backchannel", "stop", "delegate") and t is not None:
            out.append(t)
    return out


def choose_crop(clip: Clip, cfg: ModelConfig, t: TrainConfig, rnd: random.Random) -> tuple[int, int | None]:
    """(start turn, max_turns) of one crop of `clip`."""
    n_turns = len(clip.user) // cfg.turn_samples - 1
    if clip.scenario in t.whole_scenarios:
        return 0, (None if n_turns <= t.whole_max_turns else t.whole_max_turns)
    last_start = max(0, n_turns - t.crop_turns)
    turn_s = cfg.micro_turn_ms / 1000
    times = [x for x in event_times(clip) if 0 <= x < n_turns * turn_s]
    if times and rnd.random() < t.event_crop_p:
        at = rnd.choice(times) / turn_s  # in turns
        offset = rnd.uniform(0.25, 0.75) * t.crop_turns
        return min(last_start, max(0, math.floor(at - offset))), t.crop_turns
    return rnd.randrange(last_start + 1), t.crop_turns


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
        val_dir: Path | None = None,
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
        self.val_clips: list[Clip] = [load_clip(p) for p in list_clips(val_dir)] if val_dir is not None else []
        self._val_set: list[tuple[Example, torch.Generator]] | None = None
        self.best: Best | None = None
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
                "best": asdict(self.best) if self.best else None,
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
        best = state.get("best")
        self.best = Best(int(best["step"]), float(best.get("value", best.get("val_total")))) if best else None
        # steps logged after the last save are redone: keep the log in step with the state
        (self.out / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
        log.info("train.resumed", step=self.step, state=str(f), best=asdict(self.best) if self.best else None)
        return True

    # data -----------------------------------------------------------------------------------
    def batch_for(self, step: int) -> Example:
        return self._batch(self.clips, random.Random(self.tcfg.seed * 1_000_003 + step), self.tcfg.augment)

    def _batch(self, clips: list[Clip], rnd: random.Random, augment: VoiceAugment | None = None) -> Example:
        crops = []
        for _ in range(self.tcfg.batch_size):
            clip = clips[rnd.randrange(len(clips))]
            crops.append((clip, *choose_crop(clip, self.cfg, self.tcfg, rnd)))
        # drawn after every crop: augmenting changes a batch's voices, never which crops it holds
        perturbs = [augment.draw(rnd, self.cfg) if augment is not None else None for _ in crops]
        examples = [
            build_example(self.cfg, self.tokenizer, clip, max_turns, start, self.tcfg.hold_weight, perturb)
            for (clip, start, max_turns), perturb in zip(crops, perturbs, strict=True)
        ]
        return collate(examples)

    def val_set(self) -> list[tuple[Example, torch.Generator]]:
        """The fixed validation batches, each with the seed of its flow noise (built once)."""
        if self._val_set is None:
            self._val_set = [
                (self._batch(self.val_clips, random.Random(f"val:{self.tcfg.seed}:{i}")), torch.Generator())
                for i in range(self.tcfg.val_batches)
            ]
        return self._val_set

    # validation -------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Mean of each loss over the validation set, as {"val_<key>": value}."""
        sums: dict[str, float] = {}
        self.model.eval()
        try:
            with torch.no_grad():
                for i, (batch, gen) in enumerate(self.val_set()):
                    gen.manual_seed(self.tcfg.seed * 1_000_003 - 1 - i)  # the same noise every time
                    for k, v in compute_losses(self.model, batch, gen).items():
                        sums[k] = sums.get(k, 0.0) + float(v)
        finally:
            self.model.train()
        n = len(self.val_set())
        return {f"val_{k}": v / n for k, v in sums.items()}

    def _keep_if_best(self, val: dict[str, float]) -> bool:
        key = f"val_{self.tcfg.select}"
        if key not in val:
            raise ValueError(f"select: no validation loss {key!r}; the objective gives {', '.join(sorted(val))}")
        total = val[key]
        if self.best is not None and not total < self.best.value:
            return False
        self.best = Best(self.step, total)
        save_checkpoint(self.out / BEST, self.model, self.tokenizer)
        (self.out / BEST_JSON).write_text(json.dumps({"step": self.step, **val}, indent=2) + "\n")
        log.info("train.best", step=self.step, select=key, value=round(total, 4))
        return True

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
        t = self.tcfg
        until = t.steps if steps is None else min(t.steps, steps)
        bar = tqdm(total=until, initial=self.step, desc="train", unit="step", file=sys.stderr, disable=not progress)
        t0 = time.time()
        postfix: dict[str, str] = {}
        if self.best is not None:
            postfix["best"] = f"{self.best.value:.3f}@{self.best.step}"
        while self.step < until:
            rec = self.train_step()
            bar.update(1)
            val: dict[str, float] = {}
            if self.val_clips and ((t.val_every and self.step % t.val_every == 0) or self.step == until):
                val = self.validate()
                self._keep_if_best(val)
                postfix["val"] = f"{val['val_total']:.3f}"
                if self.best is not None:
                    postfix["best"] = f"{self.best.value:.3f}@{self.best.step}"
            bar.set_postfix({"loss": f"{rec['total']:.3f}", **postfix})
            if val or self.step % t.log_every == 0 or self.step == until:
                rec = {"step": self.step, "elapsed_s": round(time.time() - t0, 1), **rec, **val}
                self.history.append(rec)
                with (self.out / "log.jsonl").open("a") as f:
                    f.write(json.dumps(rec) + "\n")
            if self.step % t.ckpt_every == 0 or self.step == until:
                self.save_state()
                plot_losses(self.history, self.out / "loss.png")
        bar.close()
        return self.history


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    """One panel per loss the objective reported (train solid, validation dashed)."""
    keys = [k for k in LOSS_PANELS if any(k in h for h in history)]
    if not keys:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, style in ((key, "-"), (f"val_{key}", "o--")):
            pts = [(h["step"], h[name]) for h in history if name in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label="val" if name != key else "train")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
