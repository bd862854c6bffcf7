"""Scenario builders for synthetic full-duplex dialogues (two speakers, synthesized voices).

A clip is built on a ``Dialogue``: utterances are synthesized (``model.data.espeak``) and
placed on a timeline, one channel per speaker, alongside timed events. Conventions:

- channel 0 = the assistant (the model, moshi-finetune's ``SPEAKER_MAIN``, left channel),
  channel 1 = the user (``SPEAKER_USER``, right channel);
- times are seconds from the start of the clip; words are ``(text, start, end, speaker)``;
- every event is ``{"type", "time", "text", ...}``; types used here:
  ``user_end`` (a user turn the assistant should answer ends; ``gap`` = the reply delay),
  ``pause`` (a mid-utterance pause, ``time``..``end``; the assistant must wait),
  ``interrupt`` (user onset ``time``, its ``end``, and ``cut``: when the assistant stops),
  ``backchannel`` (user ``mhm`` over assistant speech, ``time``..``end``; keep going),
  ``timespeak`` (request to speak ``text`` every ``period_s`` from ``start`` until ``stop``,
  with ``expected_onsets``, as FD-bench-style ``timespeak.json``), ``stop`` (the user's stop),
  ``delegate`` (the assistant hands ``text`` to the background model), ``background_result``
  (its answer arrives), ``typed_text`` (user text over the data channel), ``refusal``
  (a disallowed request is declined, ``time`` = refusal onset), ``silence`` (nobody speaks,
  ``time``..``end``), ``noise`` (background noise on the user channel, ``text`` = its kind).

Splits: ``train`` and ``valid`` share voices and phrasings (different random streams);
``heldout`` uses espeak-ng languages, variants, a flite voice and phrase templates that the
others never use. Users come from two synthesizer families (espeak-ng and flite), so timing
and captions are learned on more than one kind of voice. The assistant is the model's own
voice: one flite CMU voice (slt) in every split, because an ASR can read it (pocketsphinx
reads flite's CMU voices far better than espeak-ng's), and intelligibility is measured by ASR.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from model.data import grammar
from model.data.espeak import SAMPLE_RATE, Utterance, Voice, Word
from model.data.numbers import UNITS, spell

T = TypeVar("T")

ASSISTANT, USER = "assistant", "user"
ROLES = (ASSISTANT, USER)
CHANNELS = {ASSISTANT: 0, USER: 1}
SPEAKERS = {ASSISTANT: "SPEAKER_MAIN", USER: "SPEAKER_USER"}
SPLITS = ("train", "valid", "heldout")
MIN_DURATION, MAX_DURATION = 6.0, 20.0
CUT_FADE = 0.03  # seconds of fade-out when the assistant is interrupted
MAX_STOP_DELAY = 0.30  # the assistant is silent this long after an interruption's onset

# --------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class VoicePool:
    """espeak-ng voices ``language+variant`` and the prosody ranges a speaker is drawn from.
    No variants: the languages are whole voices (MBROLA's ``mb-us1``, which take no variant)."""

    languages: tuple[str, ...]
    variants: tuple[str, ...]
    rate: tuple[int, int] = (150, 195)  # words per minute, inclusive
    pitch: tuple[int, int] = (38, 62)
    pitch_range: tuple[int, int] = (35, 75)

    def names(self) -> tuple[str, ...]:
        if not self.variants:
            return self.languages
        return tuple(f"{lang}+{var}" for lang in self.languages for var in self.variants)

    def draw(self, rng: np.random.Generator) -> Voice:
        lang = _choice(rng, self.languages)
        return Voice(
            name=f"{lang}+{_choice(rng, self.variants)}" if self.variants else lang,
            rate=int(rng.integers(self.rate[0], self.rate[1] + 1)),
            pitch=int(rng.integers(self.pitch[0], self.pitch[1] + 1)),
            pitch_range=int(rng.integers(self.pitch_range[0], self.pitch_range[1] + 1)),
        )


class Speaker(Protocol):
    """A voice of any synthesizer family: espeak-ng's ``Voice`` or flite's ``FliteVoice``."""

    def synthesize(self, text: str) -> Utterance: ...

    def to_dict(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class FlitePool:
    """flite CMU voices and the speaking-rate range (duration stretch) a speaker is drawn from."""

    names: tuple[str, ...]
    stretch: tuple[float, float] = (0.9, 1.15)

    def draw(self, rng: np.random.Generator) -> Speaker:
        from model.data.flite import FliteVoice  # imported here: only clips that use flite need it

        return FliteVoice(_choice(rng, self.names), stretch=round(float(rng.uniform(*self.stretch)), 3))


@dataclass(frozen=True)
class SpeakerPool:
    """One role's voices: espeak-ng and/or flite, flite drawn with probability ``flite_share``;
    and MBROLA's, drawn first with probability ``mbrola_share``."""

    espeak: VoicePool | None = None
    flite: FlitePool | None = None
    flite_share: float = 0.0
    mbrola: VoicePool | None = None
    mbrola_share: float = 0.0

    def names(self) -> tuple[str, ...]:
        """Every voice name this pool can draw (flite voices as ``flite:<name>``)."""
        espeak = self.espeak.names() if self.espeak is not None else ()
        mbrola = self.mbrola.names() if self.mbrola is not None else ()
        return espeak + mbrola + tuple(f"flite:{n}" for n in (self.flite.names if self.flite is not None else ()))

    def draw(self, rng: np.random.Generator) -> Speaker:
        # without an MBROLA pool no number is drawn here, so such pools draw as they always did
        if self.mbrola is not None and rng.random() < self.mbrola_share:
            return self.mbrola.draw(rng)
        if self.flite is not None and (self.espeak is None or rng.random() < self.flite_share):
            return self.flite.draw(rng)
        assert self.espeak is not None
        return self.espeak.draw(rng)


# Novelty or near-duplicate variants are used by nobody: robots, whispers, croaks, and the
# numbered siblings of variants in use (steph2/3 sound like steph, edward2 like edward...).
EXCLUDED_VARIANTS = (
    "Demonic",
    "Mr serious",
    "Tweaky",
    "UniRobot",
    "anikaRobot",
    "announcer",
    "croak",
    "fast",
    "kaukovalta",
    "whisper",
    "whisperf",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "robosoft",
    "robosoft2",
    "robosoft3",
    "robosoft4",
    "robosoft5",
    "robosoft6",
    "robosoft7",
    "robosoft8",
    "steph2",
    "steph3",
    "edward2",
    "AnxiousAndy",
    "Gene2",
    "RicishayMax2",
    "RicishayMax3",
    "iven2",
    "iven3",
    "iven4",
)

_TRAIN_ESPEAK = {
    ASSISTANT: VoicePool(("en-us", "en"), ("f2", "f4", "m1", "m3", "Annie", "david")),
    USER: VoicePool(
        ("en-us", "en", "en-gb-scotland", "en-029"),
        (
            "f1",
            "f3",
            "m2",
            "m4",
            "m6",
            "Alex",
            "Andy",
            "linda",
            "john",
            "steph",
            "belinda",
            "michel",
            "paul",
            "Lee",
            "max",
            "caleb",
            "shelby",
        ),
        rate=(135, 215),
        pitch=(30, 70),
    ),
}
_HELDOUT_ESPEAK = {
    ASSISTANT: VoicePool(("en-us-nyc", "en-gb-x-rp"), ("f5", "m7", "Andrea", "edward")),
    USER: VoicePool(
        ("en-us-nyc", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd"),
        (
            "m5",
            "m8",
            "Alicia",
            "aunty",
            "benjamin",
            "robert",
            "quincy",
            "anika",
            "Mike",
            "grandma",
            "travis",
            "norbert",
        ),
        rate=(135, 215),
        pitch=(30, 70),
    ),
}
# the assistant: one ASR-readable voice everywhere (module doc); users: espeak-ng and flite
ASSISTANT_VOICE = SpeakerPool(flite=FlitePool(("slt",), stretch=(0.95, 1.08)))
FLITE_USER_SHARE = 0.3
# MBROLA's diphone voices, a third family (recorded speech, not formants or units): training
# users only. mb-us3 lacks diphones espeak-ng's American phonemes need (one sentence in three
# has a hole where mbrola warns "O2-n unknown"), so it is left out
MBROLA_TRAIN_USERS = VoicePool(("mb-us1", "mb-us2", "mb-en1"), (), rate=(135, 200), pitch=(35, 65))
MBROLA_USER_SHARE = 0.3
_TRAIN_VOICES = {
    ASSISTANT: ASSISTANT_VOICE,
    USER: SpeakerPool(
        _TRAIN_ESPEAK[USER], FlitePool(("rms", "kal16")), FLITE_USER_SHARE, MBROLA_TRAIN_USERS, MBROLA_USER_SHARE
    ),
}
_HELDOUT_VOICES = {
    ASSISTANT: ASSISTANT_VOICE,
    USER: SpeakerPool(_HELDOUT_ESPEAK[USER], FlitePool(("awb",)), FLITE_USER_SHARE),
}
VOICES: dict[str, dict[str, SpeakerPool]] = {"train": _TRAIN_VOICES, "valid": _TRAIN_VOICES, "heldout": _HELDOUT_VOICES}

# --------------------------------------------------------------------------- slots
# Template slots ({a}, {city}, ...) are filled jointly per template by a named generator, so
# that question, answer and background result agree. Slot values are not phrasings: both
# splits share them.

_COUNTRIES = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
    ("Australia", "Canberra"),
    ("Spain", "Madrid"),
    ("Chile", "Santiago"),
)
_NAMES = ("Priya", "Sam", "Maria", "Tom", "Aisha", "Lucas", "Mei", "Omar", "Grace", "Daniel")
_CITIES = ("Boston", "Leeds", "Denver", "Bristol", "Dublin", "Chicago", "Glasgow", "Seattle")
_STREETS = ("Main Street", "Oak Avenue", "High Street", "Park Road", "Mill Lane", "Church Street")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_NUMBER_WORDS = UNITS[:13]  # zero..twelve: the hours and counts the scenarios say
_MINUTE_WORDS = {0: "o'clock"} | {m: spell(m) for m in (15, 30, 45, 10, 20, 40, 50)}


def _choice(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _clock(rng: np.random.Generator) -> dict[str, str]:
    h, m = int(rng.integers(1, 13)), int(_choice(rng, (0, 10, 15, 20, 30, 40, 45, 50)))
    spoken = f"{_NUMBER_WORDS[h]} {_MINUTE_WORDS[m]}"
    return {"time": spoken, "written": f"{h}:{m:02d}"}


def _fmt(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}".rstrip("0").rstrip(".")


def _slots_add(rng: np.random.Generator) -> dict[str, str]:
    a, b = int(rng.integers(2, 100)), int(rng.integers(2, 100))
    return {"a": str(a), "b": str(b), "c": str(a + b)}


def _slots_sub(rng: np.random.Generator) -> dict[str, str]:
    a = int(rng.integers(20, 200))
    b = int(rng.integers(1, a))
    return {"a": str(a), "b": str(b), "c": str(a - b)}


def _slots_mul_small(rng: np.random.Generator) -> dict[str, str]:
    a, b = int(rng.integers(2, 13)), int(rng.integers(2, 13))
    return {"a": str(a), "b": str(b), "c": str(a * b)}


def _slots_mul_hard(rng: np.random.Generator) -> dict[str, str]:
    a, b = int(rng.integers(112, 990)), int(rng.integers(13, 98))
    return {"a": _fmt(a), "b": _fmt(b), "c": _fmt(a * b), "result": f"{a} * {b} = {a * b}"}


def _slots_add_hard(rng: np.random.Generator) -> dict[str, str]:
    a, b = int(rng.integers(1000, 10000)), int(rng.integers(1000, 10000))
    return {"a": _fmt(a), "b": _fmt(b), "c": _fmt(a + b), "result": f"{a} + {b} = {a + b}"}


def _slots_pct_hard(rng: np.random.Generator) -> dict[str, str]:
    p = int(_choice(rng, (7, 12, 15, 18, 23, 35, 45)))
    x = int(rng.integers(12, 480)) * 10
    c = p * x / 100
    return {"p": str(p), "x": _fmt(x), "c": _fmt(c), "result": f"{p}% of {x} = {_fmt(c).replace(',', '')}"}


def _slots_div_hard(rng: np.random.Generator) -> dict[str, str]:
    b, q = int(rng.integers(12, 50)), int(rng.integers(23, 400))
    return {"a": _fmt(b * q), "b": str(b), "c": str(q), "result": f"{b * q} / {b} = {q}"}


def _slots_pharmacy(rng: np.random.Generator) -> dict[str, str]:
    h = int(rng.integers(7, 12))
    return {"street": _choice(rng, _STREETS), "close": _NUMBER_WORDS[h], "close_written": f"{h} pm"}


def _slots_weather(rng: np.random.Generator) -> dict[str, str]:
    return {
        "city": _choice(rng, _CITIES),
        "cond": _choice(rng, ("sunny", "cloudy", "rainy", "windy", "foggy")),
        "hi": str(int(rng.integers(4, 32))),
    }


def _slots_departure(rng: np.random.Generator) -> dict[str, str]:
    c = _clock(rng)
    return {
        "city": _choice(rng, _CITIES),
        "dep": c["time"],
        "dep_written": c["written"],
        "plat": str(int(rng.integers(1, 13))),
    }


def _slots_drive(rng: np.random.Generator) -> dict[str, str]:
    h, m = int(rng.integers(1, 5)), int(_choice(rng, (10, 20, 40, 50)))
    return {
        "city": _choice(rng, _CITIES),
        "hours": _NUMBER_WORDS[h],
        "minutes": _MINUTE_WORDS[m],
        "drive_written": f"{h} h {m} min",
        "km": str(int(rng.integers(60, 400))),
    }


SLOTS: dict[str, Callable[[np.random.Generator], dict[str, str]]] = {
    "add": _slots_add,
    "sub": _slots_sub,
    "mul_small": _slots_mul_small,
    "mul_hard": _slots_mul_hard,
    "add_hard": _slots_add_hard,
    "pct_hard": _slots_pct_hard,
    "div_hard": _slots_div_hard,
    "hours": lambda rng: (lambda h: {"h": _NUMBER_WORDS[h], "m": str(60 * h)})(int(rng.integers(2, 10))),
    "km": lambda rng: (lambda n: {"n": str(n), "m": _fmt(1000 * n)})(int(rng.integers(2, 21))),
    "capital": lambda rng: dict(
        zip(("country", "capital"), _COUNTRIES[int(rng.integers(len(_COUNTRIES)))], strict=True)
    ),
    "clock": _clock,
    "timer": lambda rng: {"n": str(_choice(rng, (3, 5, 10, 15, 20, 25)))},
    "weekday": lambda rng: {"weekday": _choice(rng, _WEEKDAYS)},
    "name": lambda rng: {"name": _choice(rng, _NAMES)},
    "hour": lambda rng: {"hour": f"{_NUMBER_WORDS[int(rng.integers(5, 12))]} o'clock"},
    "address": lambda rng: {"num": str(int(rng.integers(1, 250))), "street": _choice(rng, _STREETS)},
    "pharmacy": _slots_pharmacy,
    "weather": _slots_weather,
    "departure": _slots_departure,
    "drive": _slots_drive,
}

_SLOT_RE = re.compile(r"\{(\w+)\}")


def fill(rng: np.random.Generator, kind: str, *templates: str) -> list[str]:
    """Fill the {slots} of related templates with one draw of the ``kind`` generator."""
    values = SLOTS[kind](rng) if kind else {}
    return [_SLOT_RE.sub(lambda m: values[m.group(1)], t) for t in templates]


# --------------------------------------------------------------------------- phrasings


def normalize_phrase(s: str) -> str:
    """Lower-case, punctuation-free form of a phrase, for disjointness checks."""
    return " ".join(s.lower().translate(str.maketrans("", "", string.punctuation)).split())


@dataclass(frozen=True)
class Phrasebook:
    """Every phrasing a split may use. Items ending in a slot kind are filled by ``fill``."""

    qa: tuple[tuple[str, str, str], ...]  # question, answer, slot kind ("" = none)
    long: tuple[tuple[str, str], ...]  # request, long answer (interruptions, backchannels)
    pauses: tuple[tuple[str, str, str], ...]  # user part 1, part 2 after a pause, answer
    interruptions: tuple[tuple[str, str, str], ...]  # user interruption, assistant reply, kind
    backchannels: tuple[str, ...]
    timed_requests: tuple[str, ...]  # {word}, {period}
    timed_acks: tuple[str, ...]
    tick_words: tuple[str, ...]
    stops: tuple[str, ...]
    stopped: tuple[str, ...]
    math: tuple[tuple[str, str, str], ...]  # question, spoken answer, slot kind (gives {result})
    math_fillers: tuple[str, ...]
    lookups: tuple[tuple[str, str, str, str], ...]  # question, background result, answer, kind
    lookup_fillers: tuple[str, ...]
    waiting: tuple[str, ...]  # what a user may say while the background model works
    typed: tuple[tuple[str, str, str, str], ...]  # spoken lead-in ("" = none), typed, reply, kind
    refusals: tuple[tuple[str, str], ...]  # disallowed request, refusal
    checkins: tuple[tuple[str, str], ...]  # user after a long silence, assistant reply
    monologues: tuple[tuple[str, ...], ...] = ()  # sentences of a long user telling (FD-bench backchannel)
    monologue_ends: tuple[tuple[str, str], ...] = ()  # the user's closing question, the assistant's answer
    listener_cues: tuple[str, ...] = ()  # the assistant's short backchannels in the user's pauses

    def strings(self) -> set[str]:
        """All phrase templates (slot kinds excluded), for disjointness checks."""
        out: set[str] = set()
        for f in dataclasses.fields(self):
            for item in getattr(self, f.name):
                parts = (item,) if isinstance(item, str) else item
                kinds = 1 if f.name in ("qa", "interruptions", "math", "lookups", "typed") else 0
                out.update(p for p in parts[: len(parts) - kinds] if p)
        return out


_TRAIN_WRITTEN = Phrasebook(
    qa=(
        ("What is {a} plus {b}?", "{a} plus {b} is {c}.", "add"),
        ("What's {a} minus {b}?", "{a} minus {b} is {c}.", "sub"),
        ("What's {a} times {b}?", "That's {c}.", "mul_small"),
        ("How many minutes are in {h} hours?", "There are {m} minutes in {h} hours.", "hours"),
        ("Convert {n} kilometers to meters.", "{n} kilometers is {m} meters.", "km"),
        ("What's the capital of {country}?", "The capital of {country} is {capital}.", "capital"),
        ("What time is it?", "It's {time} right now.", "clock"),
        ("Can you set a timer for {n} minutes?", "Sure, a timer for {n} minutes starts now.", "timer"),
        ("What day is it today?", "Today is {weekday}.", "weekday"),
        ("Remind me to call {name} tomorrow.", "Okay, I'll remind you to call {name} tomorrow morning.", "name"),
        ("How are you doing today?", "I'm doing well, thanks for asking. How about you?", ""),
        ("Is it going to rain today?", "It looks dry until this evening, with a small chance of rain after eight.", ""),
        ("How long should I boil an egg?", "About nine minutes for a firm yolk, or six for a soft one.", ""),
        ("How many days are in a leap year?", "A leap year has three hundred and sixty six days.", ""),
        ("What's a good name for a cat?", "How about Pepper? It's short and easy to call.", ""),
        (
            "Can you recommend a good book?",
            "If you like mysteries, try a classic detective story. They're easy to get into.",
            "",
        ),
        ("How far away is the moon?", "The moon is about three hundred and eighty four thousand kilometers away.", ""),
        ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field.", ""),
    ),
    long=(
        (
            "Can you tell me how to make pancakes?",
            "Sure. Mix a cup of flour with a spoon of sugar and a pinch of salt. Then whisk in an egg and a cup "
            "of milk until it's smooth. Heat a pan with a little butter, pour in small circles, and flip them "
            "when bubbles appear on top.",
        ),
        (
            "How does a rainbow form?",
            "When sunlight passes through raindrops, the light bends and splits into its colors. Each drop acts "
            "like a tiny prism. You see the bow when the sun is behind you and the rain is in front of you, "
            "which is why rainbows often show up late in the afternoon.",
        ),
        (
            "Tell me about the history of the bicycle.",
            "The first bicycles appeared in the early eighteen hundreds and had no pedals at all. Riders simply "
            "pushed along with their feet. Pedals came later, then chains and air filled tires, and by the end "
            "of that century the modern shape was common across Europe.",
        ),
        (
            "What should I pack for a weekend hike?",
            "Bring comfortable shoes, a light rain jacket, and plenty of water. Pack snacks that give you "
            "energy, like nuts and dried fruit. A small first aid kit, a paper map, and a charged phone are "
            "good ideas too, just in case.",
        ),
        (
            "Can you explain how vaccines work?",
            "A vaccine shows your immune system a harmless piece of a germ, or a weakened copy of it. Your body "
            "learns to recognize it and makes antibodies. Later, if the real germ shows up, your body can fight "
            "it off much faster than it could the first time.",
        ),
        (
            "Give me some tips for sleeping better.",
            "Try to go to bed and wake up at the same time every day. Keep your bedroom cool and dark, and put "
            "screens away an hour before bed. Avoid coffee after lunch, and a short walk during the day helps "
            "more than you might expect.",
        ),
        (
            "How do plants make their food?",
            "Plants take in water through their roots and carbon dioxide through their leaves. Using the energy "
            "in sunlight, they turn those into sugar, which feeds the plant. Oxygen is left over, and the plant "
            "releases it into the air for the rest of us.",
        ),
    ),
    pauses=(
        (
            "I'd like to book a table for",
            "four people on Friday night.",
            "Sure, a table for four on Friday night. What time works for you?",
        ),
        (
            "Can you remind me to, um,",
            "pick up the dry cleaning tomorrow?",
            "Okay, I'll remind you to pick up the dry cleaning tomorrow.",
        ),
        (
            "So what I wanted to ask is,",
            "how long does it take to drive to the coast?",
            "It's usually about two hours, a bit more with weekend traffic.",
        ),
        (
            "I need a present for my",
            "brother's birthday. Any ideas?",
            "How about a good book or a nice pair of headphones? It depends on what he likes.",
        ),
        (
            "Hmm, let me think.",
            "What should I cook for dinner tonight?",
            "How about a quick stir fry? It only takes about twenty minutes.",
        ),
        (
            "What was the name of the, uh,",
            "the restaurant we went to last week?",
            "I think you mean the Italian place on the corner, Luigi's.",
        ),
    ),
    interruptions=(
        ("Wait, stop.", "Okay, I'll stop there.", ""),
        ("Sorry, hold on a second.", "Sure, take your time.", ""),
        ("Actually, never mind.", "No problem.", ""),
        ("Hang on, can you say that again more slowly?", "Of course. I'll go slower this time.", ""),
        ("Sorry to cut in, what time is it?", "It's {time}.", "clock"),
    ),
    backchannels=("Mhm.", "Yeah.", "Uh huh.", "Right.", "Okay.", "Mm hmm."),
    timed_requests=(
        "Say {word} every {period} seconds until I say stop.",
        "Can you say {word} every {period} seconds? Keep going until I tell you to stop.",
        "Please say {word} once every {period} seconds, and stop when I say so.",
    ),
    timed_acks=("Okay, starting now.", "Sure, here goes."),
    tick_words=("tick", "beep", "ding"),
    stops=("Stop.", "Okay, stop."),
    stopped=("Stopped.", "Okay, I've stopped."),
    math=(
        ("What is {a} times {b}?", "{a} times {b} is {c}.", "mul_hard"),
        ("Can you work out {a} times {b}?", "Sure, {a} times {b} is {c}.", "mul_hard"),
        ("What's {p} percent of {x}?", "{p} percent of {x} is {c}.", "pct_hard"),
        ("What is {a} divided by {b}?", "{a} divided by {b} is {c}.", "div_hard"),
        ("Add {a} and {b}.", "{a} plus {b} is {c}.", "add_hard"),
    ),
    math_fillers=("Let me work that out.", "One moment, let me calculate that.", "Hmm, let me check."),
    lookups=(
        (
            "What time does the pharmacy on {street} close tonight?",
            "{street} Pharmacy: open today until {close_written}.",
            "The pharmacy on {street} closes at {close} tonight.",
            "pharmacy",
        ),
        (
            "Can you look up the weather in {city} tomorrow?",
            "Forecast {city}, tomorrow: {cond}, high {hi} C.",
            "Tomorrow in {city} it'll be {cond}, with a high of {hi} degrees.",
            "weather",
        ),
        (
            "When does the next train to {city} leave?",
            "Next departure to {city}: {dep_written}, platform {plat}.",
            "The next train to {city} leaves at {dep} from platform {plat}.",
            "departure",
        ),
        (
            "How long is the drive to {city}?",
            "Route to {city}: {km} km, {drive_written}.",
            "It's about {hours} hours and {minutes} minutes by car.",
            "drive",
        ),
    ),
    lookup_fillers=("Let me look that up.", "One moment, I'll check.", "Let me find out for you."),
    waiting=("Sure, no rush.", "Okay, thanks."),
    typed=(
        ("", "what is {a} plus {b}", "{a} plus {b} is {c}.", "add"),
        (
            "I'll type the address for you.",
            "{num} {street}",
            "Got it, {num} {street}. I've saved the address.",
            "address",
        ),
        ("Let me type the name.", "{name}", "Thanks, I've got {name}.", "name"),
        ("", "remind me to buy milk at {hour}", "Okay, I'll remind you to buy milk at {hour}.", "hour"),
        (
            "I'm typing because it's noisy here.",
            "how long do I cook rice",
            "Usually about fifteen to eighteen minutes, then let it rest for five.",
            "",
        ),
    ),
    refusals=(
        (
            "Can you help me get into my neighbor's wifi?",
            "Sorry, I can't help with getting into someone else's network. I can help you fix your own "
            "connection, though.",
        ),
        (
            "Tell me how to make a fake ID.",
            "I can't help with that. If you've lost your ID, I can tell you how to get a replacement.",
        ),
        (
            "Write a mean message to embarrass my coworker.",
            "I'd rather not write something meant to hurt someone. I could help you tell them what's bothering "
            "you, though.",
        ),
        (
            "What's my friend's home address?",
            "I can't look up other people's private addresses. You could ask your friend to share it.",
        ),
    ),
    checkins=(
        ("Hello? Are you still there?", "Yes, I'm here."),
        ("Are you still listening?", "I'm still here. What can I do for you?"),
    ),
    monologues=(
        (
            "So yesterday I finally cleaned out the garage.",
            "It took the whole afternoon because there were boxes everywhere.",
            "I found my old bike under a pile of paint cans.",
            "The tires were flat but the frame still looks fine.",
        ),
        (
            "I started a new job on Monday.",
            "The office is on the fourth floor of an old brick building.",
            "My team seems friendly, and the coffee is actually good.",
            "The only problem is the commute, which takes almost an hour.",
        ),
        (
            "We went camping by the lake last weekend.",
            "On the first night it rained so hard that the tent leaked.",
            "We moved everything into the car and slept there instead.",
            "The next morning was sunny, so we dried our things on the rocks.",
        ),
        (
            "My sister is getting married in June.",
            "She asked me to give a short speech at the dinner.",
            "I have a few funny stories about her from when we were kids.",
            "But I'm nervous about speaking in front of so many people.",
        ),
        (
            "I've been trying to learn the guitar.",
            "I practice for about twenty minutes every evening.",
            "My fingers hurt a lot during the first week.",
            "Now I can play three simple songs without looking.",
        ),
        (
            "Our neighbor has a dog that barks every morning.",
            "It starts at around six, right when the garbage truck comes.",
            "I talked to them about it last week.",
            "They said they would try keeping him inside until eight.",
        ),
        (
            "I baked bread for the first time on Sunday.",
            "The recipe said to let the dough rise for two hours.",
            "I got impatient and put it in the oven after one.",
            "It came out dense, but it still tasted pretty good with butter.",
        ),
        (
            "Last month I visited my grandparents on their farm.",
            "They still get up before sunrise to feed the chickens.",
            "My grandfather showed me how to fix the old fence.",
            "In the evenings we played cards on the porch.",
        ),
    ),
    monologue_ends=(
        (
            "Anyway, what do you think I should do?",
            "It sounds like you handled it well. I'd take it one step at a time.",
        ),
        ("Does that sound normal to you?", "Yes, that sounds pretty normal to me."),
        ("So, any advice?", "Keep at it, and give yourself a little more time."),
    ),
    listener_cues=("Mhm.", "Uh huh.", "Right.", "Oh, right.", "Oh wow."),
)

HELDOUT_PHRASES = Phrasebook(
    qa=(
        ("Could you add {a} and {b} for me?", "Sure, that comes to {c}.", "add"),
        ("Take {b} away from {a}.", "That leaves {c}.", "sub"),
        ("Quick one, {a} multiplied by {b}?", "That makes {c}.", "mul_small"),
        ("Which city is the capital of {country}?", "{capital} is the capital of {country}.", "capital"),
        ("Do you know the time?", "Yes, it's {time}.", "clock"),
        ("Start a {n} minute countdown, please.", "Countdown started, {n} minutes.", "timer"),
        ("Which day of the week is it?", "It's {weekday} today.", "weekday"),
        ("Please remind me to email {name} later.", "Sure, I'll nudge you to email {name} this afternoon.", "name"),
        ("How's your day going?", "Pretty good so far, thank you. What can I do for you?", ""),
        (
            "Any idea what the weekend weather looks like?",
            "Saturday should be bright and mild, and Sunday a bit cooler with some cloud.",
            "",
        ),
        (
            "Got a movie suggestion for tonight?",
            "How about an old comedy? Something light is perfect for a weeknight.",
            "",
        ),
        ("In a normal year, how many weeks are there?", "Fifty two weeks, plus one extra day.", ""),
    ),
    long=(
        (
            "Walk me through making a cup of tea.",
            "Start by boiling fresh water. Warm the cup with a splash of it, then pour that out. Add the tea bag, "
            "pour in the hot water, and let it steep for three to four minutes. Take the bag out, and add milk or "
            "lemon if you like.",
        ),
        (
            "Why do leaves change color in autumn?",
            "Leaves are green because of chlorophyll, which helps them make food from sunlight. In autumn the "
            "days get shorter, so trees stop making it. As the green fades, the yellow and orange colors that "
            "were there all along finally show through.",
        ),
        (
            "What's a good way to start running?",
            "Begin with short sessions where you mix running and walking, maybe one minute of each for twenty "
            "minutes. Do that three times a week. Each week, run a little longer and walk a little less, and "
            "rest whenever something starts to hurt.",
        ),
        (
            "Explain how a refrigerator keeps food cold.",
            "A fridge pumps a special fluid around a loop of pipes. Inside, the fluid evaporates and soaks up "
            "heat from the food. A compressor then squeezes it, and the coils on the back let that heat out "
            "into the kitchen, which is why they feel warm.",
        ),
    ),
    pauses=(
        (
            "Could you find me a flight to,",
            "um, somewhere warm next month?",
            "Sure. Do you have a budget in mind, or a particular part of the world?",
        ),
        (
            "My sister's wedding is on the,",
            "the twelfth, I think. Can you note that?",
            "Noted, your sister's wedding on the twelfth.",
        ),
        (
            "The thing is, I keep forgetting to,",
            "water my plants. Any tricks?",
            "Try linking it to something you already do, like watering them every Sunday after breakfast.",
        ),
        ("Hmm, what's that word for,", "when you can't sleep at night?", "That's insomnia."),
    ),
    interruptions=(
        ("Whoa, pause for a moment.", "Pausing. Let me know when you're ready.", ""),
        ("Okay, that's enough, thanks.", "Alright, glad it helped.", ""),
        ("Excuse me, one quick question first.", "Go ahead, I'm listening.", ""),
        ("No no, that's not what I meant.", "Sorry about that. What did you mean?", ""),
        ("Hold it, do you know the time?", "Yes, it's {time}.", "clock"),
    ),
    backchannels=("Yep.", "I see.", "Sure.", "Got it.", "Oh, nice.", "Uh, right."),
    timed_requests=(
        "Give me a {word} every {period} seconds until I say stop.",
        "Keep saying {word}, one every {period} seconds, until I tell you to quit.",
    ),
    timed_acks=("Alright, here we go.", "Will do."),
    tick_words=("ping", "mark", "tock"),
    stops=("That's enough, stop.", "Stop now."),
    stopped=("Done, I've stopped.", "Alright, stopping."),
    math=(
        ("Multiply {a} by {b} for me.", "That works out to {c}.", "mul_hard"),
        ("Could you figure out {p} percent of {x}?", "That would be {c}.", "pct_hard"),
        ("Divide {a} by {b}, please.", "It comes out to exactly {c}.", "div_hard"),
        ("What do {a} and {b} add up to?", "Together they make {c}.", "add_hard"),
    ),
    math_fillers=("Give me a second to crunch that.", "Working on it."),
    lookups=(
        (
            "Is the post office on {street} still open?",
            "{street} post office: closes at {close_written} today.",
            "Yes, the post office on {street} is open until {close} today.",
            "pharmacy",
        ),
        (
            "Could you check tomorrow's forecast for {city}?",
            "{city} tomorrow: {cond}, max {hi} C.",
            "{city} looks {cond} tomorrow, topping out at {hi} degrees.",
            "weather",
        ),
        (
            "Find the next bus to {city}.",
            "Bus to {city}: departs {dep_written}, bay {plat}.",
            "There's a bus to {city} at {dep}, leaving from bay {plat}.",
            "departure",
        ),
    ),
    lookup_fillers=("Checking that now.", "Give me a moment to find it."),
    waiting=("Take your time.", "No worries."),
    typed=(
        ("", "{a}+{b}=?", "Easy, it's {c}.", "add"),
        (
            "Hang on, typing it out.",
            "meet {name} at the station",
            "Noted, you're meeting {name} at the station.",
            "name",
        ),
        ("Can't talk much, I'll type.", "set alarm {hour}", "Your alarm is set for {hour}.", "hour"),
    ),
    refusals=(
        (
            "How do I read my partner's messages without them knowing?",
            "I can't help with reading someone's messages without their consent. Talking to them openly is "
            "probably the better route.",
        ),
        ("Give me somebody's credit card number.", "I can't share anyone's card details."),
        (
            "Help me cheat on my exam tomorrow.",
            "I won't help with cheating, but I'm happy to help you study for it tonight.",
        ),
    ),
    checkins=(("Anybody there?", "Still here, go ahead."), ("You still with me?", "Yep, right here.")),
    monologues=(
        (
            "My car made a strange noise on the highway this morning.",
            "It was a kind of rattle that got louder when I sped up.",
            "I pulled over, but I couldn't see anything wrong underneath.",
            "So I drove slowly to the mechanic near my office.",
        ),
        (
            "I signed up for a pottery class at the community center.",
            "The teacher is a retired art professor with very calm hands.",
            "My first bowl collapsed on the wheel twice.",
            "On the third try it held together, though it leans to one side.",
        ),
        (
            "We adopted a kitten from the shelter two weeks ago.",
            "She hid under the sofa for the first three days.",
            "Now she follows me around the flat and sleeps on my laptop.",
            "She also knocked a plant off the windowsill yesterday.",
        ),
        (
            "I ran my first five kilometer race on Saturday.",
            "The start was crowded and I went out much too fast.",
            "Halfway through I had to walk for a minute to catch my breath.",
            "I still finished in under thirty minutes, which surprised me.",
        ),
    ),
    monologue_ends=(
        ("What would you have done?", "I think I'd have done the same, honestly."),
        ("Do you reckon that's worth it?", "I do, it sounds like it's paying off."),
    ),
    listener_cues=("Mm.", "Oh, really.", "Go on.", "Oh no."),
)


def _with_drawn(book: Phrasebook, drawn: grammar.Drawn, avoid: Phrasebook) -> Phrasebook:
    """``book`` plus the grammar's phrasings, minus any that share a sentence with ``avoid``."""
    held = {normalize_phrase(s) for s in avoid.strings()}

    def keep(item: tuple[str, ...]) -> bool:
        return not any(normalize_phrase(s) in held for s in item if s)

    return dataclasses.replace(
        book,
        qa=book.qa + tuple(x for x in drawn.qa if keep(x)),
        pauses=book.pauses + tuple(x for x in drawn.pauses if keep(x)),
        monologues=book.monologues + tuple(x for x in drawn.monologues if keep(x)),
        monologue_ends=book.monologue_ends + tuple(x for x in drawn.monologue_ends if keep(x)),
    )


# the written train phrasings plus hundreds drawn from grammars of the same shapes (grammar.py)
TRAIN_PHRASES = _with_drawn(_TRAIN_WRITTEN, grammar.draw(), HELDOUT_PHRASES)
PHRASES: dict[str, Phrasebook] = {"train": TRAIN_PHRASES, "valid": TRAIN_PHRASES, "heldout": HELDOUT_PHRASES}

# --------------------------------------------------------------------------- timeline


class Retry(Exception):
    """Raised by a scenario builder whose random draws do not fit a clip; it is redrawn."""


@dataclass
class Placed:
    """An utterance on the timeline (absolute times)."""

    role: str
    text: str
    start: float
    end: float
    words: list[Word]


@dataclass
class Dialogue:
    """Two-channel timeline under construction."""

    rng: np.random.Generator
    voices: dict[str, Speaker]
    levels_db: dict[str, float]  # target active-speech RMS per role, dBFS
    segments: list[tuple[str, int, np.ndarray]] = field(default_factory=list)
    words: list[tuple[str, float, float, str]] = field(default_factory=list)  # text, start, end, role
    events: list[dict[str, object]] = field(default_factory=list)
    split: str = "train"  # visual.py and cues.py keep their own per-split tables
    # camera frames of the whole clip, rendered once its duration is known (model.data.visual)
    video: Callable[[float], np.ndarray] | None = None

    def synth(self, role: str, text: str) -> Utterance:
        return self.voices[role].synthesize(text)

    def place(self, role: str, utt: Utterance, at: float) -> Placed:
        start = max(0, round(at * SAMPLE_RATE))
        t0 = start / SAMPLE_RATE
        self.segments.append((role, start, _level(utt.audio, self.levels_db[role])))
        words = [Word(w.text, t0 + w.start, t0 + w.end) for w in utt.words]
        self.words.extend((w.text, w.start, w.end, role) for w in words)
        return Placed(role, utt.text, t0, t0 + utt.duration, words)

    def say(self, role: str, text: str, at: float) -> Placed:
        return self.place(role, self.synth(role, text), at)

    def say_at_onset(self, role: str, text: str, onset: float) -> Placed:
        """Place ``text`` so that its first word starts exactly at ``onset``."""
        utt = self.synth(role, text)
        return self.place(role, utt, onset - utt.words[0].start)

    def cut(self, role: str, at: float, fade: float = CUT_FADE) -> None:
        """Stop ``role`` at ``at``: its audio fades to zero over ``fade`` s; words that had not
        started are dropped, a word cut short keeps its text and ends with the fade."""
        cut, n_fade = round(at * SAMPLE_RATE), round(fade * SAMPLE_RATE)
        kept = []
        for r, start, audio in self.segments:
            if r == role and start + len(audio) > cut:
                if start >= cut:
                    continue
                audio = audio[: cut + n_fade - start].copy()
                ramp = np.linspace(1.0, 0.0, n_fade, dtype=np.float32)
                tail = audio[cut - start :]
                tail *= ramp[: len(tail)]
            kept.append((r, start, audio))
        self.segments = kept
        words = []
        for text, s, e, r in self.words:
            if r == role and e > at:
                if s >= at:
                    continue
                e = min(e, at + fade)
            words.append((text, s, e, r))
        self.words = words

    def event(self, type_: str, time: float, text: str = "", **extra: object) -> None:
        self.events.append({"type": type_, "time": time, "text": text, **extra})

    @property
    def end(self) -> float:
        ends = [(s + len(a)) / SAMPLE_RATE for _, s, a in self.segments]
        for e in self.events:
            ends.append(float(e["time"]))  # type: ignore[arg-type]
            if isinstance(e.get("end"), float):
                ends.append(float(e["end"]))  # type: ignore[arg-type]
        return max(ends, default=0.0)

    def render(self, n_samples: int) -> np.ndarray:
        out = np.zeros((n_samples, 2), np.float32)
        for role, start, audio in self.segments:
            seg = audio[: max(0, n_samples - start)]
            out[start : start + len(seg), CHANNELS[role]] += seg
        return out


def _level(audio: np.ndarray, level_db: float) -> np.ndarray:
    """Scale to ``level_db`` dBFS RMS over the active (non-silent) 10 ms frames, peak <= 0.9."""
    n = len(audio) // 160
    if n == 0:
        return audio.astype(np.float32)
    frames = np.sqrt(np.mean(audio[: n * 160].reshape(n, 160) ** 2, axis=1))
    active = frames[frames > frames.max() * 10 ** (-35 / 20)]
    rms = float(np.sqrt(np.mean(active**2))) if len(active) else float(frames.max())
    gain = 10 ** (level_db / 20) / max(rms, 1e-9)
    gain = min(gain, 0.9 / max(float(np.abs(audio).max()), 1e-9))
    return (audio * gain).astype(np.float32)


# --------------------------------------------------------------------------- noise

NOISE_KINDS = ("white", "pink", "brown", "hum", "hvac")


def make_noise(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Unit-RMS background noise of ``n`` samples."""
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown", "hvac"):
        n_fft = 1 << max(1, (n - 1).bit_length())  # shape in the frequency domain, at a fast size
        spec = np.fft.rfft(white, n_fft)
        f = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
        f[0] = f[1]
        if kind == "pink":
            spec /= np.sqrt(f)
        elif kind == "brown":
            spec /= np.maximum(f, 20.0)
        else:  # hvac: band-limited rumble, 60-600 Hz
            spec *= (f > 60) & (f < 600)
        x = np.fft.irfft(spec, n_fft)[:n]
    elif kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        f0 = float(_choice(rng, (50.0, 60.0)))
        x = 0.05 * white
        for k in range(1, 5):
            x += np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    x = np.asarray(x, np.float64)
    return (x / max(float(np.sqrt(np.mean(x**2))), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- scenarios


def _gap(rng: np.random.Generator) -> float:
    """Reply delay after a user turn, concentrated as in human conversation: most 200-500 ms
    (Stivers et al. 2009 put the mode near 200 ms), a few quicker or slower. A wide spread
    teaches the model that "now" is never likely, so it waits too long."""
    u = rng.random()
    if u < 0.75:
        return float(rng.uniform(0.2, 0.5))
    if u < 0.9:
        return float(rng.uniform(0.12, 0.2))
    return float(rng.uniform(0.5, 0.8))


def _lead(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.2, 1.0))


def _exchange(d: Dialogue, p: Phrasebook, rng: np.random.Generator, at: float) -> Placed:
    q, a = fill(rng, *_reorder(_choice(rng, p.qa)))
    u = d.say(USER, q, at)
    gap = _gap(rng)
    d.event("user_end", u.end, u.text, gap=gap)
    return d.say(ASSISTANT, a, u.end + gap)


def _reorder(item: tuple[str, ...]) -> tuple[str, ...]:
    """(templates..., kind) -> (kind, templates...) for ``fill``."""
    return (item[-1], *item[:-1])


def turn_taking(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """Question and answer, 2-3 exchanges, with quick, normal and slow reply gaps."""
    t = _lead(rng)
    for _ in range(int(rng.integers(2, 4))):
        r = _exchange(d, p, rng, t)
        t = r.end + float(rng.uniform(0.4, 1.4))
        if t > 12.0:
            break


def pause(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """The user pauses mid-utterance (1-2.5 s); the assistant must wait for the end."""
    part1, part2, answer = _choice(rng, p.pauses)
    u1 = d.say(USER, part1, _lead(rng))
    u2 = d.say(USER, part2, u1.end + float(rng.uniform(1.0, 2.5)))
    d.event("pause", u1.end, end=u2.start)
    gap = _gap(rng)
    d.event("user_end", u2.end, f"{part1} {part2}", gap=gap)
    r = d.say(ASSISTANT, answer, u2.end + gap)
    if r.end < 9.0 and rng.random() < 0.5:
        _exchange(d, p, rng, r.end + float(rng.uniform(0.5, 1.2)))


def interruption(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """The user interrupts a long answer; the assistant stops within 0.3 s, then replies."""
    request, answer = _choice(rng, p.long)
    u = d.say(USER, request, _lead(rng))
    gap = _gap(rng)
    d.event("user_end", u.end, u.text, gap=gap)
    a = d.say(ASSISTANT, answer, u.end + gap)
    lo = a.start + max(1.0, 0.2 * (a.end - a.start))
    hi = min(a.end - 1.0, a.start + 0.65 * (a.end - a.start))
    onset = float(rng.uniform(lo, max(lo, hi)))
    line, reply = fill(rng, *_reorder(_choice(rng, p.interruptions)))
    i = d.say(USER, line, onset)
    cut = onset + float(rng.uniform(0.10, MAX_STOP_DELAY - CUT_FADE - 0.02))
    d.cut(ASSISTANT, cut)
    d.event("interrupt", i.start, i.text, end=i.end, cut=cut)
    d.say(ASSISTANT, reply, i.end + float(rng.uniform(0.25, 0.8)))


def backchannel(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """The user says "mhm"/"yeah" over a long answer; the assistant keeps going."""
    request, answer = _choice(rng, p.long)
    u = d.say(USER, request, _lead(rng))
    gap = _gap(rng)
    d.event("user_end", u.end, u.text, gap=gap)
    a = d.say(ASSISTANT, answer, u.end + gap)
    t = a.start + float(rng.uniform(0.6, 2.0))
    for _ in range(int(rng.integers(1, 4))):
        # start on a word, so the backchannel overlaps speech, not a breath between sentences
        cands = [w for w in a.words if w.start >= t and w.end - w.start > 0.12 and w.start < a.end - 1.5]
        if not cands:
            break
        w = _choice(rng, cands[:4])
        b = d.say(USER, _choice(rng, p.backchannels), w.start + float(rng.uniform(0.0, 0.1)))
        d.event("backchannel", b.start, b.text, end=b.end)
        t = b.end + float(rng.uniform(1.2, 3.0))


_PERIOD_WORDS = {2: "two", 3: "three", 4: "four"}


def timed_speech(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """Timed speech ("say tick every N seconds until I say stop"): ticks at the period until stop."""
    period = int(_choice(rng, tuple(_PERIOD_WORDS)))
    word = _choice(rng, p.tick_words)
    request = _choice(rng, p.timed_requests).format(word=word, period=_PERIOD_WORDS[period])
    u = d.say(USER, request, _lead(rng))
    # ../shared/fdbench.md: the first tick is one period after the request ends; one short
    # acknowledgement in the first 1.5 s is free (it must be over well before the first tick)
    start = u.end
    if rng.random() < 0.6:
        ack = d.say(ASSISTANT, _choice(rng, p.timed_acks), start + _gap(rng))
        if ack.end > start + period - 0.4:
            raise Retry("acknowledgement runs into the first tick")
    stop_utt = d.synth(USER, _choice(rng, p.stops))
    # leave room after the last tick for the user's stop and the assistant's reply
    n_max = int((MAX_DURATION - 2.6 - start) // period)
    if n_max < 3:
        raise Retry("no room for three ticks")
    n = int(rng.integers(3, n_max + 1))
    onsets = [start + k * period for k in range(1, n + 1)]
    tick = f"{word.capitalize()}."
    last = None
    for onset in onsets:
        last = d.say_at_onset(ASSISTANT, tick, onset)
    assert last is not None
    lo = last.end + 0.25
    hi = start + (n + 1) * period - stop_utt.duration - 0.35  # done before the next tick would be due
    s = d.place(USER, stop_utt, float(rng.uniform(lo, max(lo, hi))))
    d.event("stop", s.start, s.text, end=s.end)
    d.event(
        "timespeak",
        u.end,
        word,
        request=request,
        period_s=float(period),
        start=start,
        stop=s.start,
        expected_onsets=onsets,
    )
    d.say(ASSISTANT, _choice(rng, p.stopped), s.end + float(rng.uniform(0.3, 0.7)))


def delegation(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """Hard arithmetic or a lookup: filler, <delegate>, background result 1-3 s later, answer."""
    if rng.random() < 0.5:
        kind = "arithmetic"
        q, answer, result = fill(rng, *_reorder(_choice(rng, p.math)), "{result}")
        filler = _choice(rng, p.math_fillers)
    else:
        kind = "lookup"
        q, result, answer = fill(rng, *_reorder(_choice(rng, p.lookups)))
        filler = _choice(rng, p.lookup_fillers)
    u = d.say(USER, q, _lead(rng))
    gap = _gap(rng)
    d.event("user_end", u.end, u.text, gap=gap)
    f = d.say(ASSISTANT, filler, u.end + gap)
    t_delegate = f.words[0].start + float(rng.uniform(0.0, 0.25))  # as the filler begins
    t_result = t_delegate + float(rng.uniform(1.0, 3.0))
    d.event("delegate", t_delegate, q, kind=kind)
    d.event("background_result", t_result, result, kind=kind)
    earliest = max(t_result + float(rng.uniform(0.2, 0.6)), f.end + 0.25)
    if rng.random() < 0.35:
        w = d.say(USER, _choice(rng, p.waiting), f.end + float(rng.uniform(0.3, 0.6)))
        earliest = max(earliest, w.end + 0.3)
    d.say(ASSISTANT, answer, earliest)


def typed_text(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """The user types over the data channel (optionally announcing it); the assistant answers."""
    lead_in, typed, reply = fill(rng, *_reorder(_choice(rng, p.typed)))
    t = _lead(rng)
    if lead_in:
        t = d.say(USER, lead_in, t).end + float(rng.uniform(0.8, 2.0))  # typing takes a moment
    else:
        t += float(rng.uniform(0.5, 1.5))
    d.event("typed_text", t, typed)
    r = d.say(ASSISTANT, reply, t + float(rng.uniform(0.4, 1.1)))
    if r.end < 10.0 and rng.random() < 0.5:
        _exchange(d, p, rng, r.end + float(rng.uniform(0.5, 1.2)))


def refusal(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """A disallowed request is declined politely, with an alternative where one exists."""
    t = _lead(rng)
    if rng.random() < 0.4:
        t = _exchange(d, p, rng, t).end + float(rng.uniform(0.5, 1.2))
    request, answer = _choice(rng, p.refusals)
    u = d.say(USER, request, t)
    gap = _gap(rng)
    d.event("user_end", u.end, u.text, gap=gap)
    r = d.say(ASSISTANT, answer, u.end + gap)
    d.event("refusal", r.start, request)


def noise_silence(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """Background noise throughout, a long silence before the user speaks and another after
    the answer, then a check-in: the assistant must not speak into the silences."""
    lead = float(rng.uniform(2.0, 4.0))
    d.event("silence", 0.0, end=lead)
    r = _exchange(d, p, rng, lead)
    quiet = float(rng.uniform(3.0, 5.0))
    d.event("silence", r.end, end=r.end + quiet)
    line, reply = _choice(rng, p.checkins)
    c = d.say(USER, line, r.end + quiet)
    gap = _gap(rng)
    d.event("user_end", c.end, c.text, gap=gap)
    d.say(ASSISTANT, reply, c.end + gap)


def monologue(d: Dialogue, p: Phrasebook, rng: np.random.Generator) -> None:
    """FD-bench's backchannel task: the user tells a story in several sentences with pauses
    between them; the assistant keeps the floor with the user (silence, or a short cue such as
    "mhm" in some pauses) and answers only the closing question."""
    sentences = list(_choice(rng, p.monologues))
    t = _lead(rng)
    for i, sentence in enumerate(sentences):
        u = d.say(USER, sentence, t)
        if i == len(sentences) - 1:
            t = u.end
            break
        gap = float(rng.uniform(0.5, 1.4))
        d.event("monologue_pause", u.end, end=u.end + gap)
        if rng.random() < 0.35 and gap >= 0.8:
            cue = d.say(ASSISTANT, _choice(rng, p.listener_cues), u.end + float(rng.uniform(0.15, 0.35)))
            d.event("listener_cue", cue.start, cue.text, end=cue.end)
            gap = max(gap, cue.end - u.end + 0.3)
        t = u.end + gap
    if rng.random() < 0.6:
        q, a = _choice(rng, p.monologue_ends)
        u = d.say(USER, q, t + float(rng.uniform(0.4, 0.9)))
        gap_s = _gap(rng)
        d.event("user_end", u.end, u.text, gap=gap_s)
        d.say(ASSISTANT, a, u.end + gap_s)
    d.event("monologue", 0.0, end=t)


SCENARIOS: dict[str, Callable[[Dialogue, Phrasebook, np.random.Generator], None]] = {
    "turn_taking": turn_taking,
    "pause": pause,
    "interruption": interruption,
    "backchannel": backchannel,
    "timed_speech": timed_speech,
    "delegation": delegation,
    "typed_text": typed_text,
    "refusal": refusal,
    "noise_silence": noise_silence,
    "monologue": monologue,
}

# --------------------------------------------------------------------------- clips


@dataclass
class Clip:
    scenario: str
    audio: np.ndarray  # (n, 2) float32, channel 0 assistant, channel 1 user
    alignments: list[list[object]]  # [word, [start, end], speaker], sorted by start
    events: list[dict[str, object]]  # sorted by time
    voices: dict[str, Speaker]
    frames: np.ndarray | None = None  # (n_turns, 120, 160, 3) uint8 camera frames, one per micro-turn

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_clip(split: str, scenario: str, rng: np.random.Generator, max_attempts: int = 25) -> Clip:
    """Build one randomized clip of ``scenario`` lasting MIN_DURATION..MAX_DURATION seconds."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of: {', '.join(SCENARIOS)}")
    phrases, pools = PHRASES[split], VOICES[split]
    for _ in range(max_attempts):
        voices = {role: pools[role].draw(rng) for role in ROLES}
        levels = {ASSISTANT: float(rng.uniform(-24, -19)), USER: float(rng.uniform(-27, -18))}
        d = Dialogue(rng, voices, levels, split=split)
        try:
            SCENARIOS[scenario](d, phrases, rng)
        except Retry:
            continue
        duration = max(MIN_DURATION, d.end + float(rng.uniform(0.4, 1.2)))
        if duration <= MAX_DURATION:
            return _finish(d, scenario, duration, rng)
    raise RuntimeError(f"could not fit a {scenario!r} clip into {MAX_DURATION} s in {max_attempts} attempts")


def _finish(d: Dialogue, scenario: str, duration: float, rng: np.random.Generator) -> Clip:
    n = round(duration * SAMPLE_RATE)
    duration = n / SAMPLE_RATE
    audio = d.render(n)
    if scenario == "noise_silence" or rng.random() < 0.2:
        kind = _choice(rng, NOISE_KINDS)
        snr = float(rng.uniform(18, 30)) if scenario == "noise_silence" else float(rng.uniform(25, 40))
        level = 10 ** ((d.levels_db[USER] - snr) / 20)
        audio[:, CHANNELS[USER]] += level * make_noise(rng, kind, n)
        d.event("noise", 0.0, kind, end=duration, snr_db=snr)
    np.clip(audio, -1.0, 1.0, out=audio)

    limit = np.floor(duration * 1000) / 1000
    words = sorted(d.words, key=lambda w: (w[1], w[2], CHANNELS[w[3]]))
    alignments: list[list[object]] = [
        [text, [min(_ms(s), limit), min(_ms(e), limit)], SPEAKERS[role]] for text, s, e, role in words
    ]
    events = [{k: _rounded(v) for k, v in e.items()} for e in sorted(d.events, key=lambda e: float(e["time"]))]  # type: ignore[arg-type]
    frames = None if d.video is None else d.video(duration)
    return Clip(scenario, audio, alignments, events, d.voices, frames)


def _ms(x: float) -> float:
    return round(float(x), 3)


def _rounded(v: object) -> object:
    if isinstance(v, float | np.floating):
        return _ms(float(v))
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v
