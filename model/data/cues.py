"""In-turn cues (CueSpeak-style, audio only): the assistant speaks *while the user talks*.

The user sets a rule ("every time I say a number, say the next one"), the assistant may
acknowledge it, then the user talks for 8-12 s in ordinary sentences holding 2-4 cue words.
0.2-0.5 s after each cue word ends the assistant says the cued word ("Four.") over the user,
who keeps talking; otherwise it says nothing. Overlap is the point: a turn detector that waits
for silence cannot do this.

Splits: ``train`` and ``valid`` share ``TRAIN_RULES`` and ``TRAIN_FILLERS``; ``heldout`` has its
own rules (one kind, the previous number, only there), rule phrasings and sentences.

Events: ``cue_rule`` (``time`` = end of the rule, ``text`` = the rule, ``kind``), one ``cue`` per
cue word (``time`` = the word's end, ``text`` = the word, ``response`` = the expected word,
``onset`` = the response's onset), and ``cue_talk`` (``time``..``end``: the user's talk).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.data.espeak import Utterance
from model.data.numbers import UNITS
from model.data.scenarios import (
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

TALK_S = (8.0, 12.0)
N_CUES = (2, 4)
DELAY_S = (0.2, 0.5)  # response onset after the cue word's end
MAX_END = 18.0  # the talk ends by then: the clip ends 0.4-1.2 s later, under MAX_DURATION


@dataclass(frozen=True)
class Rule:
    kind: str
    phrasings: tuple[str, ...]
    cues: dict[str, str]  # cue word -> the word the assistant says
    sentences: tuple[str, ...]  # one {w} slot each, never the last word: the user talks on
    fits: tuple[tuple[str, ...], ...] = ()  # per sentence, the cue words that make sense in it (default all)

    def words_for(self, i: int) -> tuple[str, ...]:
        return self.fits[i] if self.fits else tuple(self.cues)


def _numbers(step: int, lo: int, hi: int) -> dict[str, str]:
    return {UNITS[n]: UNITS[n + step] for n in range(lo, hi + 1)}


def _opposites(*pairs: tuple[str, str]) -> dict[str, str]:
    return {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}


# Number sentences avoid "to", "too", "for", "won", "ate": they sound like numbers.
_TRAIN_NUMBER_SENTENCES = (
    "I bought {w} apples at the market this morning.",
    "We waited almost {w} hours at the station yesterday.",
    "My brother has {w} cats and a very old dog.",
    "There were {w} people in the queue ahead of me.",
    "The recipe needs {w} eggs and a cup of sugar.",
    "I think I read {w} books over the summer.",
    "She called me {w} times before lunch.",
    "Our team scored {w} goals in the second half.",
)
_HELDOUT_NUMBER_SENTENCES = (
    "The bakery sold {w} loaves before noon.",
    "I counted {w} birds sitting on the wire outside.",
    "He carried {w} boxes into the attic by himself.",
    "We planted {w} trees along the back fence.",
    "It took {w} tries before the engine started.",
    "My aunt keeps {w} chickens behind her house.",
)
TRAIN_RULES = (
    Rule(
        "next_number",
        ("Every time I say a number, say the next one.", "Whenever you hear a number, say the number after it."),
        _numbers(+1, 2, 11),
        _TRAIN_NUMBER_SENTENCES,
    ),
    Rule(
        "colour_opposite",
        ("Whenever I say a colour, say its opposite.", "Each time I name a colour, tell me the opposite colour."),
        _opposites(("black", "white"), ("red", "green"), ("blue", "orange")),
        (
            "I painted the old fence {w} last weekend.",
            "My new jacket is {w} with a tiny pocket inside.",
            "We saw a {w} car parked outside the bakery.",
            "The walls in the kitchen are {w} and a bit faded.",
            "She wore a {w} scarf at the wedding.",
            "There was a {w} kite stuck in the tree again.",
        ),
    ),
    Rule(
        "word_opposite",
        (
            "Each time I say hot, cold, big or small, say the opposite.",
            "When I say hot, cold, big or small, give the opposite word.",
        ),
        _opposites(("hot", "cold"), ("big", "small")),
        (
            "The soup was really {w} when it came out.",
            "It was a {w} day, so we stayed near the river.",
            "They live in a {w} house at the end of the road.",
            "The water in the lake felt {w} this morning.",
            "He ordered a {w} coffee and sat by the window.",
            "We adopted a {w} dog from the shelter last spring.",
        ),
        (
            ("hot", "cold"),
            ("hot", "cold"),
            ("big", "small"),
            ("cold",),
            ("hot", "cold", "big", "small"),
            ("big", "small"),
        ),
    ),
)
HELDOUT_RULES = (
    Rule(
        "previous_number",
        (
            "Whenever I say a number, tell me the one before it.",
            "If I mention a number, answer with the number below it.",
        ),
        _numbers(-1, 3, 12),
        _HELDOUT_NUMBER_SENTENCES,
    ),
    Rule(
        "next_number",
        ("Any time a number comes up, give me the next number.",),
        _numbers(+1, 2, 11),
        _HELDOUT_NUMBER_SENTENCES,
    ),
    Rule(
        "colour_opposite",
        ("If I mention a colour, answer with its opposite colour.",),
        _opposites(("black", "white"), ("red", "green"), ("blue", "orange")),
        (
            "The neighbours bought a {w} sofa last month.",
            "I found a {w} umbrella on the bus seat.",
            "Her bicycle is {w} with silver wheels.",
            "The door of the shed is {w} and needs paint.",
        ),
    ),
    Rule(
        "word_opposite",
        ("When I say up, down, fast or slow, give me the opposite.",),
        _opposites(("up", "down"), ("fast", "slow")),
        (
            "The lift went {w} very quietly this morning.",
            "My old laptop is really {w} these days.",
            "We walked {w} the hill behind the school.",
            "The new train is quite {w} on the coast line.",
        ),
        (("up", "down"), ("fast", "slow"), ("up", "down"), ("fast", "slow")),
    ),
)
TRAIN_FILLERS = (
    "It was a pretty normal week otherwise.",
    "Anyway, that's what I was thinking about.",
    "I should probably write these things down more often.",
    "The weather has been strange lately.",
    "My friend thinks I talk about this a lot.",
    "Then we went home and made some dinner.",
)
HELDOUT_FILLERS = (
    "Honestly, nothing else really happened.",
    "I keep forgetting about it somehow.",
    "So that was basically my morning.",
    "The neighbours were surprised by all of it.",
    "After that we just relaxed at home.",
)
TRAIN_ACKS = ("Got it.", "Okay, ready.")
HELDOUT_ACKS = ("Sure thing.", "Alright, go ahead.")


def tables(split: str) -> tuple[tuple[Rule, ...], tuple[str, ...], tuple[str, ...]]:
    if split == "heldout":
        return HELDOUT_RULES, HELDOUT_FILLERS, HELDOUT_ACKS
    return TRAIN_RULES, TRAIN_FILLERS, TRAIN_ACKS


def normalize(s: str) -> str:
    return " ".join(s.lower().translate(str.maketrans("", "", string.punctuation)).split())


def cue_speak(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """A rule, an optional acknowledgement, then 8-12 s of talk with 2-4 cues answered over it."""
    rules, fillers, acks = tables(d.split)
    rule = _choice(rng, rules)
    u = d.say(USER, _choice(rng, rule.phrasings), _lead(rng))
    d.event("cue_rule", u.end, u.text, kind=rule.kind)
    t = u.end + float(rng.uniform(0.6, 1.2))
    if rng.random() < 0.6:
        ack = d.say(ASSISTANT, _choice(rng, acks), u.end + _gap(rng))
        t = ack.end + float(rng.uniform(0.4, 1.0))

    # the talk lasts 8-12 s and fits the clip (clips stay under 20 s); every synthesis costs,
    # so sentences are added until the target is reached, and a miss is retried whole
    limit = min(TALK_S[1] + 0.5, MAX_END - t)
    if limit < TALK_S[0]:
        raise Retry("no room for the talk")
    talk_s = float(rng.uniform(TALK_S[0], min(TALK_S[1], limit - 0.5)))
    n_cues = int(rng.integers(N_CUES[0], N_CUES[1] + 1))
    utts: list[tuple[Utterance, bool]] = []
    total = 0.0
    for i in rng.permutation(len(rule.sentences))[:n_cues]:
        utt = d.synth(USER, rule.sentences[int(i)].format(w=_choice(rng, rule.words_for(int(i)))))
        if len(utts) >= N_CUES[0] and total + utt.duration > limit:
            break
        utts.append((utt, True))
        total += utt.duration + 0.3
    for i in rng.permutation(len(fillers)):
        if total >= talk_s:
            break
        utt = d.synth(USER, fillers[int(i)])
        if total + utt.duration > limit:
            break
        utts.append((utt, False))
        total += utt.duration + 0.3
    if total < TALK_S[0] - 0.3:
        raise Retry("talk too short")
    order = rng.permutation(len(utts))
    talk_start = t
    for i in order:
        utt, is_cue = utts[int(i)]
        s = d.place(USER, utt, t)
        if is_cue:
            _respond(d, rule, s, rng)
        t = s.end + float(rng.uniform(0.15, 0.45))
    d.event("cue_talk", talk_start, end=s.end)


def _respond(d: Dialogue, rule: Rule, s: Placed, rng: np.random.Generator) -> None:
    """The cued word, 0.2-0.5 s after the cue word ends, while the sentence goes on."""
    hits = [w for w in s.words if normalize(w.text) in rule.cues]
    if len(hits) != 1:
        raise Retry(f"expected one cue word in {s.text!r}")
    cue = hits[0]
    onset = cue.end + float(rng.uniform(*DELAY_S))
    if onset > s.end - 0.3:  # the user must still be talking
        onset = cue.end + DELAY_S[0]
        if onset > s.end - 0.3:
            raise Retry("cue too close to the end of its sentence")
    word = normalize(cue.text)
    response = rule.cues[word]
    r = d.say_at_onset(ASSISTANT, f"{response.capitalize()}.", onset)
    d.event("cue", cue.end, word, response=response, onset=r.words[0].start)


SCENARIOS: dict[str, Callable[[Dialogue, Phrasebook, np.random.Generator], None]] = {"cue_speak": cue_speak}
