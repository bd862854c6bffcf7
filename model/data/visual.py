"""Synthetic camera scenarios: rep counting, visual alerts and visual questions at a moment.

Each clip of these scenarios carries camera frames, one per micro-turn: frame k is what the
camera shows during micro-turn k, [0.2k, 0.2(k+1)) s, rendered as the scene at 0.2k (the live
sampler keeps the first frame of each slot, ``media/video_sampler.py``). Frames are flat
colours and simple shapes drawn with numpy, 160x120 uint8 RGB, on a background with a
per-clip colour, gradient and blotchy texture plus a little per-frame flicker, so the model
cannot key on one exact background value.

Splits: ``train`` and ``valid`` share ``TRAIN_LOOK``/``TRAIN_VISUAL``; ``heldout`` uses shapes,
colour shades, backgrounds and phrasings of its own (``HELDOUT_LOOK``/``HELDOUT_VISUAL``).
Colour *names* are shared (the model cannot name a colour it never heard), their RGB shades
are not.

Events (times in seconds; the eval's contract, see ``model/eval``):

- rep_counting: ``rep_request`` (end of the request), ``rep`` (``time`` = the figure is back
  down, ``text`` = "three", ``count`` = 3, ``onset`` = the spoken count's onset), ``partial_rep``
  (a half rep back down, not counted), ``uncounted_rep`` (a full rep after the user said stop),
  ``stop`` (``time``..``end``, the user's stop);
- visual_alert: ``alert_request`` (end of the request, ``kind`` = light | ball),
  ``visual_event`` (``text`` = the colour, or "out" when the ball leaves the box; ``onset`` =
  the alert's onset), ``distractor`` (another colour change, or the ball moving inside the box);
- visual_question: ``user_end`` (with ``gap``) and ``visual_answer`` (``time`` = the question's
  end, ``text`` = the colour shown then, ``onset`` = the answer's onset).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from model.data.scenarios import (
    _NUMBER_WORDS,
    ASSISTANT,
    USER,
    Dialogue,
    Phrasebook,
    Placed,
    Retry,
    _choice,
    _gap,
    _lead,
)

FRAME_S = 0.2  # one frame per micro-turn
H, W = 120, 160
MIN_END = 7.6  # clips end 0.4-1.2 s after the last thing happens: keep them >= 8 s

RGB = tuple[int, int, int]

# --------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class Look:
    """Everything a split's frames are drawn with."""

    backgrounds: tuple[RGB, ...]  # muted, far from every object colour
    shapes: tuple[str, ...]  # the rep figure, the lamp, the question's object
    ball_shapes: tuple[str, ...]
    outlines: tuple[RGB, ...]  # box outline, lamp housing
    colours: dict[str, RGB]  # colour name -> shade (names shared by the splits, shades not)

    def rgb_values(self) -> set[RGB]:
        return {*self.backgrounds, *self.outlines, *self.colours.values()}


TRAIN_LOOK = Look(
    backgrounds=((200, 200, 195), (70, 74, 82), (222, 214, 192), (120, 124, 128)),
    shapes=("square", "circle"),
    ball_shapes=("circle",),
    outlines=((25, 25, 30), (245, 245, 245)),
    colours={
        "red": (215, 35, 35),
        "green": (35, 175, 55),
        "blue": (35, 75, 215),
        "yellow": (235, 215, 35),
        "purple": (135, 45, 165),
        "orange": (240, 135, 25),
    },
)
HELDOUT_LOOK = Look(
    backgrounds=((160, 178, 160), (96, 78, 68), (188, 200, 222)),
    shapes=("triangle", "diamond"),
    ball_shapes=("ring",),
    outlines=((45, 20, 20), (255, 250, 225)),
    colours={
        "red": (195, 25, 70),
        "green": (75, 205, 115),
        "blue": (55, 120, 240),
        "yellow": (250, 235, 85),
        "purple": (165, 75, 205),
        "orange": (255, 160, 60),
    },
)
COLOUR_NAMES = tuple(TRAIN_LOOK.colours)


# --------------------------------------------------------------------------- phrasings


@dataclass(frozen=True)
class VisualPhrases:
    rep_requests: tuple[str, ...]
    rep_acks: tuple[str, ...]
    rep_stops: tuple[str, ...]
    rep_closers: tuple[str, ...]
    light_requests: tuple[str, ...]  # {colour}
    ball_requests: tuple[str, ...]
    alert_acks: tuple[str, ...]
    light_alerts: tuple[str, ...]  # {colour}
    ball_alerts: tuple[str, ...]
    thanks: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]  # {colour}

    def strings(self) -> set[str]:
        return {s for f in fields(self) for s in getattr(self, f.name)}


TRAIN_VISUAL = VisualPhrases(
    rep_requests=("Count my reps.", "Can you count my reps for me?", "Count my squats, please.", "Start counting."),
    rep_acks=("Okay, counting.", "Sure, go ahead."),
    rep_stops=("Okay, stop counting.", "Stop, I'm done."),
    rep_closers=("Nice set.", "Good work."),
    light_requests=("Tell me when the light turns {colour}.", "Let me know when the light goes {colour}."),
    ball_requests=("Tell me when the ball leaves the box.", "Say something when the ball gets out of the box."),
    alert_acks=("Okay, I'll watch.", "Sure, watching."),
    light_alerts=("It's {colour} now.", "Now it's {colour}."),
    ball_alerts=("It's out now.", "The ball just left the box."),
    thanks=("Thanks.", "Great, thank you."),
    questions=("What colour is it now?", "What colour is the shape now?", "And what colour is it now?"),
    answers=("It's {colour}.", "That's {colour}."),
)
HELDOUT_VISUAL = VisualPhrases(
    rep_requests=("Keep count of my reps.", "Could you count these for me?", "Track my reps out loud."),
    rep_acks=("Alright, I'm counting.",),
    rep_stops=("That's it, you can stop.", "Alright, no more counting."),
    rep_closers=("Well done.",),
    light_requests=("Let me know once the lamp goes {colour}.", "Warn me when the lamp switches to {colour}."),
    ball_requests=("Tell me once the ball is out of the box.", "Let me know when the ball escapes the box."),
    alert_acks=("Alright, keeping an eye on it.",),
    light_alerts=("The lamp is {colour}.", "There, {colour}."),
    ball_alerts=("It's out of the box.", "There, it left."),
    thanks=("Cheers.", "Perfect, thanks."),
    questions=("Which colour is showing right now?", "What colour do you see?"),
    answers=("I see {colour}.", "Right now it's {colour}."),
)


def tables(split: str) -> tuple[Look, VisualPhrases]:
    return (HELDOUT_LOOK, HELDOUT_VISUAL) if split == "heldout" else (TRAIN_LOOK, TRAIN_VISUAL)


def normalize(s: str) -> str:
    return " ".join(s.lower().translate(str.maketrans("", "", string.punctuation)).split())


# --------------------------------------------------------------------------- drawing

_YY, _XX = np.mgrid[0:H, 0:W].astype(np.float32)


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """(H, W) bool mask of ``shape`` centred on (cx, cy) with half-size ``r`` pixels."""
    dx, dy = _XX - cx, _YY - cy
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.3 * r
    if shape == "triangle":  # apex up
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= 0.65 * (dy + r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def rect_mask(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    x, y = _XX, _YY
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _jitter(rng: np.random.Generator, rgb: RGB, amount: int) -> np.ndarray:
    return np.clip(np.array(rgb, np.float32) + rng.integers(-amount, amount + 1, 3), 0, 255)


@dataclass
class Backdrop:
    """One clip's background (colour, gradient, texture) and per-frame flicker."""

    base: np.ndarray  # (H, W, 3) float32
    flicker: np.ndarray  # (n_max,) float32 brightness offset per frame

    @classmethod
    def draw(cls, rng: np.random.Generator, look: Look) -> Backdrop:
        colour = _jitter(rng, _choice(rng, look.backgrounds), 8)
        angle = float(rng.uniform(0, 2 * np.pi))
        ramp = (np.cos(angle) * (_XX - W / 2) + np.sin(angle) * (_YY - H / 2)) / (W / 2)
        grad = float(rng.uniform(3, 9)) * ramp  # (H, W)
        blotch = rng.uniform(-4, 4, (H // 10, W // 10, 1)).astype(np.float32)
        texture = np.repeat(np.repeat(blotch, 10, axis=0), 10, axis=1)  # (H, W, 1)
        base = colour[None, None, :] + grad[:, :, None] + texture
        flicker = rng.uniform(-2, 2, 200).astype(np.float32)  # >= MAX_DURATION / FRAME_S frames
        return cls(base.astype(np.float32), flicker)


def render(duration: float, backdrop: Backdrop, paint: Callable[[np.ndarray, float], None]) -> np.ndarray:
    """(n_turns, H, W, 3) uint8: frame k is the scene at 0.2k, for every micro-turn of the clip."""
    n = math.ceil(duration / FRAME_S - 1e-9)
    out = np.empty((n, H, W, 3), np.uint8)
    for k in range(n):
        img = backdrop.base + backdrop.flicker[k % len(backdrop.flicker)]
        paint(img, k * FRAME_S)
        np.clip(np.rint(img), 0, 255, out=img)
        out[k] = img
    return out


def _ease(x: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * min(max(x, 0.0), 1.0))


@dataclass(frozen=True)
class Segment:
    """A stretch of motion: the value goes from ``v0`` to ``v1`` between ``t0`` and ``t1``."""

    t0: float
    t1: float
    v0: float
    v1: float


def along(segments: Sequence[Segment], t: float, rest: float, eased: bool = True) -> float:
    """The value at ``t`` of a piecewise motion; it holds still between and after segments."""
    value = rest
    for s in segments:
        if t < s.t0:
            break
        x = (t - s.t0) / max(s.t1 - s.t0, 1e-9)
        x = _ease(x) if eased else min(max(x, 0.0), 1.0)
        value = s.v0 + (s.v1 - s.v0) * x
    return value


def _colour_at(changes: Sequence[tuple[float, str]], t: float) -> str:
    """The colour shown at ``t`` for a schedule [(time, colour), ...] starting at time 0."""
    current = changes[0][1]
    for time, colour in changes:
        if time <= t:
            current = colour
    return current


# --------------------------------------------------------------------------- scenarios


def _number(n: int) -> str:
    return _NUMBER_WORDS[n]


def _check_length(d: Dialogue) -> None:
    if d.end < MIN_END:
        raise Retry("clip too short")


def rep_counting(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """The user asks for a count; a shape goes up and back down through reps at a varying tempo,
    with pauses and a half rep; the assistant says each count 0.2-0.4 s after the rep is done."""
    look, ph = tables(d.split)
    shape, colour = _choice(rng, look.shapes), _choice(rng, COLOUR_NAMES)
    rgb = _jitter(rng, look.colours[colour], 6)
    size = float(rng.uniform(9, 15))
    cx = float(rng.uniform(30, W - 30))
    bottom = float(rng.uniform(H - 30, H - 20))
    amp = float(rng.uniform(38, 55))
    backdrop = Backdrop.draw(rng, look)

    u = d.say(USER, _choice(rng, ph.rep_requests), _lead(rng))
    d.event("rep_request", u.end, u.text)
    t = u.end + float(rng.uniform(0.4, 1.2))
    if rng.random() < 0.5:
        ack = d.say(ASSISTANT, _choice(rng, ph.rep_acks), u.end + _gap(rng))
        t = max(t, ack.end - 0.3)  # the first rep is never done before ~1 s after this
    tempo = float(rng.uniform(1.2, 3.0))  # seconds per rep
    # as many reps as fit (slow ones, a pause or a half rep included) before the stop, under 20 s
    n_fit = int((17.0 - t - 2.0) // (tempo * 1.15 + 0.5))
    n_full = int(rng.integers(3, max(3, min(7, n_fit)) + 1))
    partial_before = int(rng.integers(0, n_full)) if rng.random() < 0.6 else -1
    after_stop = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0  # reps the user does after "stop"
    motion: list[Segment] = []
    last: Placed | None = None

    def rep(t: float, peak: float) -> tuple[float, float]:
        """One rep from ``t`` (to ``peak`` of the full height); returns (back down, next start)."""
        dur = min(max(tempo * float(rng.uniform(0.85, 1.15)), 1.2), 3.0)
        if peak < 1.0:
            dur = max(1.0, 0.8 * dur)
        up, hold = 0.35 * dur, 0.05 * dur
        motion.extend([Segment(t, t + up, 0.0, peak), Segment(t + up + hold, t + 0.75 * dur, peak, 0.0)])
        return t + 0.75 * dur, t + dur

    for i in range(n_full):
        if i > 0 and rng.random() < 0.25:
            t += float(rng.uniform(0.8, 2.0))  # a pause at the bottom
        if i == partial_before:
            down, t = rep(t, float(rng.uniform(0.4, 0.55)))
            d.event("partial_rep", down)
        down, t = rep(t, 1.0)
        word = _number(i + 1)
        last = d.say_at_onset(ASSISTANT, f"{word.capitalize()}.", down + float(rng.uniform(0.2, 0.4)))
        d.event("rep", down, word, count=i + 1, onset=last.words[0].start)
    assert last is not None
    stop_at = last.end + float(rng.uniform(0.3, 1.0))
    if after_stop:  # the user stops the count while still going: those reps are not counted
        stop_at = max(last.end + 0.1, min(stop_at, t + 0.2))
        for _ in range(after_stop):
            down, t = rep(max(t, stop_at + 0.3), 1.0)
            d.event("uncounted_rep", down)
    s = d.say(USER, _choice(rng, ph.rep_stops), stop_at)
    d.event("stop", s.start, s.text, end=s.end)
    if rng.random() < 0.5:
        d.say(ASSISTANT, _choice(rng, ph.rep_closers), max(s.end, t) + float(rng.uniform(0.3, 0.6)))
    _check_length(d)

    def paint(img: np.ndarray, t: float) -> None:
        y = bottom - amp * along(motion, t, 0.0)
        img[shape_mask(shape, cx, y, size)] = rgb

    d.video = lambda duration: render(duration, backdrop, paint)


def visual_alert(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """Alerts ("tell me when the light turns green", "when the ball leaves the box"): the alert comes
    0.3-0.6 s after the event; other colour changes and moves inside the box come first."""
    look, ph = tables(d.split)
    backdrop = Backdrop.draw(rng, look)
    kind = "light" if rng.random() < 0.5 else "ball"
    outline = _jitter(rng, _choice(rng, look.outlines), 5)
    if kind == "light":
        target = _choice(rng, COLOUR_NAMES)
        request = _choice(rng, ph.light_requests).format(colour=target)
    else:
        target = "out"
        request = _choice(rng, ph.ball_requests)
    u = d.say(USER, request, _lead(rng))
    d.event("alert_request", u.end, u.text, kind=kind)
    watch_from = u.end
    if rng.random() < 0.5:
        watch_from = d.say(ASSISTANT, _choice(rng, ph.alert_acks), u.end + _gap(rng)).end
    t_event = max(watch_from + float(rng.uniform(1.5, 7.0)), float(rng.uniform(6.0, 8.0)))
    paint = _light(d, rng, look, outline, target, t_event) if kind == "light" else _ball(d, rng, look, outline, t_event)
    alert = _choice(rng, ph.light_alerts if kind == "light" else ph.ball_alerts).format(colour=target)
    a = d.say_at_onset(ASSISTANT, alert[0].upper() + alert[1:], t_event + float(rng.uniform(0.3, 0.6)))
    d.event("visual_event", t_event, target, onset=a.words[0].start)
    if rng.random() < 0.4:
        d.say(USER, _choice(rng, ph.thanks), a.end + float(rng.uniform(0.3, 0.8)))
    _check_length(d)
    d.video = lambda duration: render(duration, backdrop, paint)


def _light(
    d: Dialogue, rng: np.random.Generator, look: Look, housing: np.ndarray, target: str, t_event: float
) -> Callable[[np.ndarray, float], None]:
    """A lamp that changes colour: distractors (other colours) first, ``target`` at ``t_event``."""
    others = [c for c in COLOUR_NAMES if c != target]
    times = []
    t = float(rng.uniform(0.5, 2.0))
    for _ in range(int(rng.integers(1, 4))):
        if t > t_event - 0.8:
            break
        times.append(t)
        t += float(rng.uniform(0.8, 2.5))
    changes: list[tuple[float, str]] = [(0.0, _choice(rng, others))]
    for time in times:
        changes.append((time, _choice(rng, [c for c in others if c != changes[-1][1]])))
        d.event("distractor", time, changes[-1][1])
    changes.append((t_event, target))
    if rng.random() < 0.4:  # it may change again later: one alert is enough
        later = t_event + float(rng.uniform(1.5, 3.0))
        changes.append((later, _choice(rng, others)))
        d.event("distractor", later, changes[-1][1])
    shades = {c: _jitter(rng, look.colours[c], 6) for c in COLOUR_NAMES}
    shape, r = _choice(rng, look.shapes), float(rng.uniform(8, 13))
    cx, cy = float(rng.uniform(25, W - 25)), float(rng.uniform(25, H - 25))
    box = rect_mask(cx - r - 5, cy - r - 5, cx + r + 5, cy + r + 5)
    lamp = shape_mask(shape, cx, cy, r)

    def paint(img: np.ndarray, t: float) -> None:
        img[box] = housing
        img[lamp] = shades[_colour_at(changes, t)]

    return paint


def _ball(
    d: Dialogue, rng: np.random.Generator, look: Look, outline: np.ndarray, t_event: float
) -> Callable[[np.ndarray, float], None]:
    """A ball moving around inside a box (distractors), then out through a wall: its centre
    crosses the wall at ``t_event`` and it rolls off the frame."""
    bw, bh = float(rng.uniform(56, 80)), float(rng.uniform(44, 60))
    x0, y0 = float(rng.uniform(12, W - bw - 12)), float(rng.uniform(12, H - bh - 12))
    x1, y1 = x0 + bw, y0 + bh
    r = float(rng.uniform(5, 7))
    lo_x, hi_x, lo_y, hi_y = x0 + r + 3, x1 - r - 3, y0 + r + 3, y1 - r - 3

    def waypoint() -> tuple[float, float]:
        x, y = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
        if rng.random() < 0.5:  # up against a wall: a near miss
            if rng.random() < 0.5:
                x = lo_x if rng.random() < 0.5 else hi_x
            else:
                y = lo_y if rng.random() < 0.5 else hi_y
        return x, y

    px, py = waypoint()
    xs: list[Segment] = []
    ys: list[Segment] = []
    t = float(rng.uniform(0.3, 1.5))
    while True:
        move = float(rng.uniform(0.4, 1.0))
        if t + move > t_event - 1.2:
            break
        nx, ny = waypoint()
        xs.append(Segment(t, t + move, px, nx))
        ys.append(Segment(t, t + move, py, ny))
        d.event("distractor", t + move, "move")
        px, py, t = nx, ny, t + move + float(rng.uniform(0.3, 1.5))
    # out through the wall with the most room beyond it, at a constant speed
    side = int(np.argmax([x0, W - x1, y0, H - y1]))
    speed = float(rng.uniform(60, 110))
    wall = (x0, x1, y0, y1)[side]
    pos = px if side < 2 else py
    t_start = t_event - abs(wall - pos) / speed
    far = (-2 * r, W + 2 * r, -2 * r, H + 2 * r)[side]
    t_end = t_event + abs(far - wall) / speed
    exit_seg = Segment(t_start, t_end, pos, far)
    if t_start < (xs[-1].t1 + 0.2 if xs else 0.2):
        raise Retry("no time to leave the box")
    (xs if side < 2 else ys).append(exit_seg)
    rgb = _jitter(rng, look.colours[_choice(rng, COLOUR_NAMES)], 6)
    shape = _choice(rng, look.ball_shapes)
    frame = rect_mask(x0 - 1, y0 - 1, x1 + 1, y1 + 1) & ~rect_mask(x0 + 1, y0 + 1, x1 - 1, y1 - 1)

    def paint(img: np.ndarray, t: float) -> None:
        img[frame] = outline
        bx = along(xs, t, xs[0].v0 if xs else px, eased=side >= 2 or t < t_start)
        by = along(ys, t, ys[0].v0 if ys else py, eased=side < 2 or t < t_start)
        img[shape_mask(shape, bx, by, r)] = rgb

    return paint


def visual_question(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """Questions at a moment ("what colour is it now?"): a shape changes colour every few
    seconds; the answer names the colour shown when the question ends (no change within 0.6 s
    before or 0.3 s after it)."""
    look, ph = tables(d.split)
    backdrop = Backdrop.draw(rng, look)
    n_q = 1 if rng.random() < 0.4 else 2
    q1 = d.synth(USER, _choice(rng, ph.questions))
    t = float(rng.uniform(2.5, 6.0)) if n_q == 1 else float(rng.uniform(1.0, 3.0))
    placed = [d.place(USER, q1, t)]
    if n_q == 2:
        q2 = d.synth(USER, _choice(rng, [q for q in ph.questions if q != q1.text]))
        placed.append(d.place(USER, q2, placed[0].end + float(rng.uniform(3.0, 5.5))))
    ends = [q.end for q in placed]
    # the schedule: a change every 1.2-3.5 s, none just before or after a question's end,
    # and often one during the question, so the answer is the colour *now*
    times: list[float] = []
    t = float(rng.uniform(0.5, 2.5))
    while t < 21.0:
        if all(not (e - 0.6 <= t <= e + 0.3) for e in ends):
            times.append(t)
        t += float(rng.uniform(1.2, 3.5))
    for q in placed:
        during = q.end - float(rng.uniform(0.6, 1.0))
        if rng.random() < 0.6 and all(abs(during - x) > 0.5 for x in times):
            times.append(during)
    times.sort()
    changes: list[tuple[float, str]] = [(0.0, _choice(rng, COLOUR_NAMES))]
    for time in times:
        changes.append((time, _choice(rng, [c for c in COLOUR_NAMES if c != changes[-1][1]])))
    for i, q in enumerate(placed):
        colour = _colour_at(changes, q.end)
        gap = _gap(rng)
        d.event("user_end", q.end, q.text, gap=gap)
        a = d.say(ASSISTANT, _choice(rng, ph.answers).format(colour=colour), q.end + gap)
        d.event("visual_answer", q.end, colour, onset=a.words[0].start)
        if i + 1 < len(placed) and a.end > placed[i + 1].start - 0.3:
            raise Retry("answer runs into the next question")
    _check_length(d)
    shades = {c: _jitter(rng, look.colours[c], 6) for c in COLOUR_NAMES}
    shape, r = _choice(rng, look.shapes), float(rng.uniform(14, 24))
    cx, cy = float(rng.uniform(35, W - 35)), float(rng.uniform(35, H - 35))
    mask = shape_mask(shape, cx, cy, r)

    def paint(img: np.ndarray, t: float) -> None:
        img[mask] = shades[_colour_at(changes, t)]

    d.video = lambda duration: render(duration, backdrop, paint)


SCENARIOS: dict[str, Callable[[Dialogue, Phrasebook, np.random.Generator], None]] = {
    "rep_counting": rep_counting,
    "visual_alert": visual_alert,
    "visual_question": visual_question,
}
