"""Compositional phrasings for the train split: many questions, paused requests and monologues.

A hand-written phrasebook of 6 paused requests and 8 monologues is memorised, not learned: the
model keys its timing on those exact sentences and has nothing to go on for a phrasing it has
never heard. What generalises is the shape — a question or a request addressed to the assistant
ends a turn; a sentence cut at a preposition, an article or an "um" does not; a story told in
statements keeps going. These grammars draw hundreds of phrasings of each shape from small word
lists, so the shape, not the sentence, is what the training signal rewards. Measured on the
shipped checkpoint fine-tuned with them: the held-out text and caption losses fell, its held-out
turn-taking did not improve (checkpoints/tiny/MODEL_CARD.md, "Tried after this checkpoint").

Everything here is plain strings with no ``{slots}`` (the slot kind is ``""``), drawn from a
fixed seed so the train phrasebook is the same on every machine. The held-out phrasebook in
``scenarios.py`` is written by hand and never drawn from here; ``scenarios`` drops any drawn
string that collides with it, and a test checks the two stay disjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

__all__ = ["Drawn", "draw"]

T = TypeVar("T")

SEED = 20_261_130

# ----------------------------------------------------------------------------- paused requests

# (verb phrase, objects, tails, answer template): the request is "<opener> <verb> <object> <tail>",
# the answer fills {obj} and {tail}
_REQUESTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    (
        "remind me to",
        (
            "call the dentist",
            "buy more coffee",
            "water the tomatoes",
            "pay the electric bill",
            "send the report",
            "pick up my glasses",
            "take the bins out",
            "book the car service",
        ),
        ("after lunch", "on Thursday", "this evening", "tomorrow at nine", "before the weekend"),
        "Okay, I'll remind you to {obj} {tail}.",
    ),
    (
        "add",
        ("eggs", "rice", "bananas", "olive oil", "dish soap", "oat milk", "batteries", "rubbish bags"),
        ("to my shopping list", "to the list for Saturday", "to the grocery order"),
        "Done, I've added {obj} {tail}.",
    ),
    (
        "book",
        (
            "a haircut",
            "a taxi to the station",
            "a court for tennis",
            "a room for two nights",
            "a table by the window",
            "a visit to the vet",
        ),
        ("for Saturday morning", "at half past six", "for next Tuesday", "for the end of the month"),
        "Sure, I'll book {obj} {tail}.",
    ),
    (
        "play some",
        ("quiet piano music", "old soul records", "jazz", "rain sounds", "songs from the eighties", "something upbeat"),
        ("in the kitchen", "while I cook", "for about an hour", "in the living room"),
        "Playing {obj} {tail}.",
    ),
    (
        "send a message to",
        ("my brother", "the landlord", "Nadia", "the football coach", "my manager", "Uncle Joe"),
        ("saying I'm running late", "saying thanks for dinner", "asking about the keys", "saying I'll call back soon"),
        "Okay, I'll send a message to {obj} {tail}.",
    ),
    (
        "turn on",
        ("the heating", "the porch light", "the fan", "the dishwasher", "the bedroom lamp"),
        ("in ten minutes", "at seven tonight", "for half an hour", "when I get home"),
        "Sure, I'll turn on {obj} {tail}.",
    ),
    (
        "find",
        ("a bakery", "a cash machine", "a quiet cafe", "a petrol station", "a bike shop", "a chemist"),
        ("near the office", "close to here", "on the way home", "that opens early"),
        "I found {obj} {tail}. It's about five minutes away.",
    ),
    (
        "write down",
        ("the wifi password", "the parking spot number", "my locker code", "the plumber's name"),
        ("in my notes", "somewhere safe", "for later"),
        "Got it, I've written down {obj} {tail}.",
    ),
)

_OPENERS = ("Could you", "Can you", "Please", "I need you to", "Would you", "Hey, can you", "Could you please")
_FILLERS = ("um,", "uh,", "er,", "hmm,")
_QUESTION_OPENERS = ("Could you", "Can you", "Would you", "Hey, can you", "Could you please")


def _paused_request(rng: np.random.Generator) -> tuple[str, str, str]:
    verb, objects, tails, answer = _REQUESTS[int(rng.integers(len(_REQUESTS)))]
    opener, obj, tail = _pick(rng, _OPENERS), _pick(rng, objects), _pick(rng, tails)
    end = "?" if opener in _QUESTION_OPENERS else "."
    # where the user stops: after the verb, after the object (with "and" or a filler), or on a filler
    cut = int(rng.integers(3))
    if cut == 0:
        part1, part2 = f"{opener} {verb},", f"{obj} {tail}{end}"
    elif cut == 1:
        part1, part2 = f"{opener} {verb} {obj}, {_pick(rng, _FILLERS)}", f"{tail}{end}"
    else:
        part1, part2 = f"{opener} {verb}, {_pick(rng, _FILLERS)}", f"{obj} {tail}{end}"
    return part1, part2, answer.format(obj=_own(obj), tail=_own(tail))


def _own(phrase: str) -> str:
    """The assistant's echo of the user's words: "my X" becomes "your X"."""
    return " ".join({"my": "your", "I'm": "you're", "I'll": "you'll", "I": "you"}.get(w, w) for w in phrase.split())


# ----------------------------------------------------------------------------- questions

_OPPOSITES = (
    ("hot", "cold"),
    ("early", "late"),
    ("full", "empty"),
    ("heavy", "light"),
    ("quiet", "loud"),
    ("open", "closed"),
    ("wide", "narrow"),
    ("rough", "smooth"),
    ("tall", "short"),
    ("cheap", "expensive"),
    ("fast", "slow"),
    ("wet", "dry"),
    ("sweet", "sour"),
    ("brave", "scared"),
    ("inside", "outside"),
)
_LEGS = (
    ("spider", "eight"),
    ("horse", "four"),
    ("chicken", "two"),
    ("beetle", "six"),
    ("dog", "four"),
    ("duck", "two"),
    ("ant", "six"),
    ("crab", "ten"),
)
_AFTER = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_COLOURS = (
    ("a ripe banana", "yellow"),
    ("the sky on a clear day", "blue"),
    ("fresh grass", "green"),
    ("a fire engine", "red"),
    ("coal", "black"),
    ("fresh snow", "white"),
    ("a carrot", "orange"),
)
_HOWTO = (
    ("How long does it take to boil rice?", "About fifteen minutes, then let it rest for five."),
    ("How often should I water a cactus?", "Not often, about once every two or three weeks."),
    ("How do I get a stain out of a shirt?", "Rinse it in cold water, then rub in a little soap before washing."),
    ("How long should I let bread dough rise?", "Usually about an hour, until it doubles in size."),
    ("What's a good way to fall asleep faster?", "Try slow breathing and keep your phone out of the bedroom."),
    ("How many cups of water should I drink a day?", "Around six to eight cups is a common guide."),
    (
        "Why do leaves change colour in autumn?",
        "The green fades as the tree stops making it, and the other colours show.",
    ),
    ("Where should I keep fresh herbs?", "In a glass of water in the fridge, like a little bunch of flowers."),
    ("Is it better to run in the morning or the evening?", "Either is fine. The best time is the one you'll stick to."),
    ("What should I bring to a picnic?", "A blanket, some sandwiches, fruit and plenty of water."),
)
_QUESTION_LEADS = ("", "Quick question. ", "Hey, ", "Okay, ", "So, ", "I was wondering, ")


def _question(rng: np.random.Generator) -> tuple[str, str]:
    kind = int(rng.integers(6))
    if kind == 0:
        a, b = _pick(rng, _OPPOSITES)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        q, ans = f"What's the opposite of {a}?", f"The opposite of {a} is {b}."
    elif kind == 1:
        animal, n = _pick(rng, _LEGS)
        q, ans = f"How many legs does a {animal} have?", f"A {animal} has {n}."
    elif kind == 2:
        i = int(rng.integers(len(_AFTER)))
        q, ans = f"Which month comes after {_AFTER[i]}?", f"After {_AFTER[i]} comes {_AFTER[(i + 1) % 12]}."
    elif kind == 3:
        i = int(rng.integers(len(_DAYS)))
        q, ans = f"What day comes before {_DAYS[i]}?", f"The day before {_DAYS[i]} is {_DAYS[i - 1]}."
    elif kind == 4:
        thing, colour = _pick(rng, _COLOURS)
        q, ans = f"What colour is {thing}?", f"It's {colour}."
    else:
        q, ans = _pick(rng, _HOWTO)
    lead = _pick(rng, _QUESTION_LEADS)
    return (lead + q[0].lower() + q[1:]) if lead else q, ans


# ----------------------------------------------------------------------------- monologues

_STORIES = (
    "I finally painted the spare bedroom",
    "I ran my first ten kilometer race",
    "we moved into a new flat",
    "I adopted a kitten from the shelter",
    "I tried to fix the washing machine myself",
    "we planted a vegetable patch",
    "I took my nephew to the aquarium",
    "I went to a pottery class",
    "our car broke down on the motorway",
    "I cooked dinner for eight people",
    "we drove up to the mountains",
    "I cleared out my old emails",
    "I helped my friend move house",
    "I started going to the gym before work",
    "we hosted a quiz night",
)
_WHEN = (
    "Last weekend",
    "On Saturday",
    "Yesterday",
    "A few days ago",
    "This morning",
    "Over the holidays",
    "Last month",
    "On Tuesday evening",
)
_MIDDLES = (
    "It took a lot longer than I expected.",
    "My cousin came over to help for a while.",
    "At first everything went smoothly.",
    "We had to go back to the shop twice for supplies.",
    "The weather was grey and windy the whole time.",
    "I watched a couple of videos to get started.",
    "There were far more people there than I thought there would be.",
    "I had to borrow some tools from a neighbour.",
    "The instructions were really confusing.",
    "We stopped for lunch at a little place by the river.",
    "It was much noisier than I imagined.",
    "I made a list so I wouldn't forget anything.",
)
_TURNS = (
    "Then halfway through, something went wrong.",
    "Of course, that's when it started to rain.",
    "Around four o'clock I was ready to give up.",
    "Then I realised I had forgotten the most important part.",
    "The second day was a lot harder.",
    "After a while my back started to hurt.",
)
_OUTCOMES = (
    "In the end it all worked out fine.",
    "By the evening we were exhausted but happy.",
    "It doesn't look perfect, but I'm proud of it.",
    "I think I'll do it again next year.",
    "Now I know what to do differently next time.",
    "Everyone said it was the best one so far.",
)
_CLOSERS = (
    ("What would you have done?", "I think I'd have done the same. You kept going, and that's what counts."),
    ("Is that weird?", "Not at all, that happens to a lot of people."),
    ("Do you have any tips for next time?", "Start a little earlier and give yourself more time than you think."),
    ("Should I try it again?", "I'd say yes. The second time is usually easier."),
    ("How would you handle that?", "I'd take a short break and then go one step at a time."),
    ("Does that make sense?", "Yes, it makes sense. It sounds like a busy day."),
)


def _monologue(rng: np.random.Generator) -> tuple[str, ...]:
    opening = f"{_pick(rng, _WHEN)}, {_pick(rng, _STORIES)}."
    middles = [str(s) for s in rng.choice(np.array(_MIDDLES), size=2, replace=False)]
    body = [middles[0], _pick(rng, _TURNS), middles[1]] if rng.random() < 0.5 else middles
    return (opening, *body, _pick(rng, _OUTCOMES))


# ----------------------------------------------------------------------------- draw


@dataclass(frozen=True)
class Drawn:
    """Drawn phrasings in ``Phrasebook`` field shapes (slot kind ``""``)."""

    qa: tuple[tuple[str, str, str], ...]
    pauses: tuple[tuple[str, str, str], ...]
    monologues: tuple[tuple[str, ...], ...]
    monologue_ends: tuple[tuple[str, str], ...]


def draw(n_qa: int = 160, n_pauses: int = 240, n_monologues: int = 200, seed: int = SEED) -> Drawn:
    """Distinct phrasings of each shape, in a fixed order for ``seed``."""
    rng = np.random.default_rng(seed)
    qa = _distinct(lambda: (*_question(rng), ""), n_qa)
    pauses = _distinct(lambda: _paused_request(rng), n_pauses)
    monologues = _distinct(lambda: _monologue(rng), n_monologues)
    return Drawn(qa=qa, pauses=pauses, monologues=monologues, monologue_ends=_CLOSERS)


def _distinct(make: Callable[[], T], n: int) -> tuple[T, ...]:
    seen: dict[T, None] = {}
    for _ in range(50 * n):
        seen.setdefault(make(), None)
        if len(seen) == n:
            break
    return tuple(seen)


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]
