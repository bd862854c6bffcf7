"""flite speech: text + voice + stretch + pitch shift -> 16 kHz float32 mono audio + word times.

A second synthesizer family beside :mod:`model.data.espeak`, with the same ``Utterance`` and
``Word`` types and the same voice interface (``synthesize(text)``, ``to_dict()``). Debian's
flite 2.2 C library is driven with ctypes: one ``flite_synth_text`` call per utterance builds
a ``cst_utterance`` holding the audio *and* the engine's own segmentation, so word times are
the synthesizer's segment boundaries, not an estimate.

Voices
------
``slt`` (female), ``rms``, ``awb`` (Scottish male) are clustergen (statistical parametric)
voices; ``kal16`` is a diphone voice: robotic, ~20x cheaper. All four are 16 kHz. Measured
here: ~23 ms of CPU per second of speech for the clustergen voices, ~1 ms for kal16.

Word times
----------
Every ``Word`` item of the utterance is read through two feature paths (flite's own
``ffeature`` language, checked against ``flite -psdur``'s segment ends):

- start: ``R:SylStructure.daughter1.daughter1.R:Segment.p.end`` (the end of the segment
  before the word's first segment, i.e. the end of a pause before the word if there is one),
- end: ``R:SylStructure.daughtern.daughtern.R:Segment.end``.

flite's tokenizer splits the input on whitespace; a token's name is the whitespace token
with its punctuation stripped (a token of bare opening punctuation, ``(`` or ``"``, is folded
into the next one), and each word hangs under the token it came from (``R:Token.parent``).
Token names are matched to the whitespace tokens in order as substrings, so word -> token ->
input token is exact: ``42`` is spoken as ``forty two`` and becomes one ``Word("42", ...)``
spanning both. Tokens with no letters or digits are dropped, as in espeak.py. If the names
cannot be matched, or a spoken token gets no timed word, the utterance falls back to spans
in proportion to token length over the audio's loud region (a safety net; not seen on any
text tried). Word edges are then the engine's; the pause segments before the first and
after the last word are cut to 10 ms, then silence is trimmed with espeak.py's ``_trim``.

Prosody
-------
``stretch`` multiplies the voice's ``duration_stretch`` feature (kal16's own default is 1.1).
``f0_shift`` is in semitones and sets the ``f0_shift`` feature (a factor on the voice's mean
F0, read by the clustergen F0 smoothing and by the diphone intonation model): honoured by
slt, awb and kal16. rms computes its F0 with a SPAM accent model that ignores it, so a
non-zero shift on rms is refused rather than silently dropped.

Determinism
-----------
The clustergen excitation draws noise from libc ``rand()``, so unseeded output depends on what
the process synthesized before. ``srand`` is reset before every utterance, which makes the
samples a pure function of (text, voice, stretch, f0_shift), in one process and across
processes. ``rand()`` is process-wide state shared with espeak-ng, so this module holds
espeak.py's engine lock: the two engines never synthesize at the same time.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from model.data.espeak import _FRAME, _KEEP, _TRIM_DB, SAMPLE_RATE, Utterance, Word, _frame_db, _trim
from model.data.espeak import _lock as _engine_lock

__all__ = ["F0_VOICES", "VOICES", "FliteError", "FliteVoice", "list_voices", "synthesize"]

VOICES = ("slt", "rms", "awb", "kal16")
F0_VOICES = frozenset({"slt", "awb", "kal16"})  # voices whose F0 follows the f0_shift feature
STRETCH_RANGE = (0.5, 2.0)
F0_SHIFT_RANGE = (-12.0, 12.0)  # semitones

_LIB_DIR = Path("/usr/lib/x86_64-linux-gnu")
_BASE_LIBS = ("libflite.so.1", "libflite_usenglish.so.1", "libflite_cmulex.so.1")  # dependency order
_SEED = 1  # srand() seed before every utterance

_WORD_START = b"R:SylStructure.daughter1.daughter1.R:Segment.p.end"
_WORD_END = b"R:SylStructure.daughtern.daughtern.R:Segment.end"

_SPOKEN_RE = re.compile(r"[A-Za-z0-9]")


class FliteError(RuntimeError):
    """The flite library or a flite voice is missing, or the engine failed."""


class _Wave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _Voice(ctypes.Structure):
    # the leading fields of cst_voice; only `features` is used
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p), ("ffunctions", ctypes.c_void_p)]


_P = ctypes.c_void_p
_S = ctypes.c_char_p


class _Engine:
    """The process-wide flite library handle and its registered voices."""

    def __init__(self) -> None:
        libs = []
        for name in _BASE_LIBS:
            try:
                libs.append(ctypes.CDLL(str(_LIB_DIR / name), mode=ctypes.RTLD_GLOBAL))
            except OSError as e:
                raise FliteError(f"cannot load {name} ({e}); install the libflite1 package") from e
        lib = libs[0]
        for fname, argtypes, restype in (
            ("flite_init", [], ctypes.c_int),
            ("flite_synth_text", [_S, _P], _P),
            ("utt_wave", [_P], ctypes.POINTER(_Wave)),
            ("utt_relation", [_P, _S], _P),
            ("relation_head", [_P], _P),
            ("item_next", [_P], _P),
            ("item_as", [_P, _S], _P),
            ("item_parent", [_P], _P),
            ("item_feat_string", [_P, _S], _S),
            ("ffeature_float", [_P, _S], ctypes.c_float),
            ("delete_utterance", [_P], None),
            ("feat_present", [_P, _S], ctypes.c_int),
            ("feat_float", [_P, _S], ctypes.c_float),
            ("feat_set_float", [_P, _S, ctypes.c_float], None),
        ):
            fn = getattr(lib, fname)
            fn.argtypes, fn.restype = argtypes, restype
        libc = ctypes.CDLL(None)
        libc.srand.argtypes, libc.srand.restype = [ctypes.c_uint], None
        lib.flite_init()
        self.lib, self.libc = lib, libc
        self._keep = libs  # the voice libraries resolve symbols from these
        self._voices: dict[str, tuple[Any, float]] = {}  # name -> (cst_voice*, default stretch)

    def voice(self, name: str) -> tuple[Any, float]:
        if name not in self._voices:
            if name not in VOICES:
                raise FliteError(f"unknown flite voice {name!r}; known: {', '.join(VOICES)}")
            try:
                vlib = ctypes.CDLL(str(_LIB_DIR / f"libflite_cmu_us_{name}.so.1"), mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                raise FliteError(f"flite voice {name!r} is not installed ({e})") from e
            register = getattr(vlib, f"register_cmu_us_{name}")
            register.argtypes, register.restype = [_S], ctypes.POINTER(_Voice)
            vox = register(None)
            if not vox:
                raise FliteError(f"register_cmu_us_{name} returned NULL")
            feats = vox.contents.features
            default = (
                self.lib.feat_float(feats, b"duration_stretch")
                if self.lib.feat_present(feats, b"duration_stretch")
                else 1.0
            )
            self._keep.append(vlib)
            self._voices[name] = (vox, float(default))
        return self._voices[name]

    def synth(
        self, text: str, name: str, stretch: float, f0_factor: float
    ) -> tuple[np.ndarray, int, list[tuple[int, float, float]], list[str]]:
        """Audio (int16), its rate, words as (token index, start s, end s), token names."""
        vox, default_stretch = self.voice(name)
        feats = vox.contents.features
        # set on every call: the voice object is shared by all callers of this voice
        self.lib.feat_set_float(feats, b"duration_stretch", default_stretch * stretch)
        self.lib.feat_set_float(feats, b"f0_shift", f0_factor)
        self.libc.srand(_SEED)
        utt = self.lib.flite_synth_text(text.encode("ascii"), ctypes.cast(vox, _P))
        if not utt:
            raise FliteError(f"flite_synth_text failed for {text!r}")
        try:
            wave = self.lib.utt_wave(utt)
            if not wave or wave.contents.num_samples <= 0:
                raise FliteError(f"flite produced no audio for {text!r}")
            w = wave.contents
            if w.num_channels != 1:
                raise FliteError(f"flite produced {w.num_channels} channels, expected 1")
            pcm = np.ctypeslib.as_array(w.samples, (w.num_samples,)).copy()
            token_index: dict[int, int] = {}
            names: list[str] = []
            item = self.lib.relation_head(self.lib.utt_relation(utt, b"Token"))
            while item:
                token_index[item] = len(token_index)
                names.append((self.lib.item_feat_string(item, b"name") or b"").decode("ascii", "replace"))
                item = self.lib.item_next(item)
            words = []
            item = self.lib.relation_head(self.lib.utt_relation(utt, b"Word"))
            while item:
                token = self.lib.item_parent(self.lib.item_as(item, b"Token"))
                start = self.lib.ffeature_float(item, _WORD_START)
                end = self.lib.ffeature_float(item, _WORD_END)
                words.append((token_index.get(token, -1), float(start), float(end)))
                item = self.lib.item_next(item)
            return pcm, int(w.sample_rate), words, names
        finally:
            self.lib.delete_utterance(utt)


_engine: _Engine | None = None  # a forked child inherits it


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


@functools.cache
def list_voices() -> tuple[str, ...]:
    """The flite voices installed on this machine, among ``VOICES``."""
    if not all((_LIB_DIR / n).exists() for n in _BASE_LIBS):
        return ()
    return tuple(n for n in VOICES if (_LIB_DIR / f"libflite_cmu_us_{n}.so.1").exists())


@dataclass(frozen=True)
class FliteVoice:
    """A speaker: a flite voice plus prosody. ``stretch`` > 1 speaks slower; ``f0_shift`` is in
    semitones (not for rms, see the module docstring)."""

    name: str  # one of VOICES
    stretch: float = 1.0
    f0_shift: float = 0.0

    def __post_init__(self) -> None:
        _check(self.name, self.stretch, self.f0_shift)

    def synthesize(self, text: str) -> Utterance:
        return synthesize(text, self.name, self.stretch, self.f0_shift)

    def to_dict(self) -> dict[str, object]:
        return {"engine": "flite", **asdict(self)}


def _check(name: str, stretch: float, f0_shift: float) -> None:
    if name not in list_voices():
        raise FliteError(
            f"flite voice {name!r} is not available; installed: {', '.join(list_voices()) or 'none'} "
            "(Debian packages flite / libflite1)"
        )
    if not STRETCH_RANGE[0] <= stretch <= STRETCH_RANGE[1]:
        raise ValueError(f"stretch must be within {STRETCH_RANGE}, got {stretch}")
    if not F0_SHIFT_RANGE[0] <= f0_shift <= F0_SHIFT_RANGE[1]:
        raise ValueError(f"f0_shift must be within {F0_SHIFT_RANGE} semitones, got {f0_shift}")
    if f0_shift and name not in F0_VOICES:
        raise ValueError(f"flite voice {name!r} ignores f0_shift (its F0 comes from an accent model)")


def synthesize(text: str, voice: str = "slt", stretch: float = 1.0, f0_shift: float = 0.0) -> Utterance:
    """Speak ``text`` with flite; return 16 kHz float32 mono audio and per-word times.

    ``voice`` is one of ``list_voices()``; ``stretch`` scales durations; ``f0_shift`` moves the
    mean pitch in semitones. Results are cached, so the returned audio array is read-only.
    """
    if not isinstance(text, str) or not _SPOKEN_RE.search(text):
        raise ValueError(f"nothing to say in {text!r}")
    if not text.isascii():
        raise ValueError(f"text must be ASCII (flite's English front end reads bytes): {text!r}")
    _check(voice, stretch, f0_shift)
    return _synthesize_cached(" ".join(text.split()), voice, float(stretch), float(f0_shift))


@functools.lru_cache(maxsize=512)
def _synthesize_cached(text: str, voice: str, stretch: float, f0_shift: float) -> Utterance:
    with _engine_lock:
        pcm, rate, raw_words, names = _get_engine().synth(text, voice, stretch, 2.0 ** (f0_shift / 12.0))
    audio = pcm.astype(np.float32) / 32768.0
    if rate != SAMPLE_RATE:  # word times are in seconds, unaffected
        g = math.gcd(SAMPLE_RATE, rate)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    words = _align(text, raw_words, names, audio)
    if words is None:
        words = _proportional(text, audio)
    else:
        # outside the words is flite's own pause segment, which the clustergen voices fill
        # with breath noise above _trim's threshold: cut it to _KEEP first
        a = max(0, round(words[0].start * SAMPLE_RATE) - _KEEP)
        b = min(len(audio), round(words[-1].end * SAMPLE_RATE) + _KEEP)
        shift = a / SAMPLE_RATE
        audio = audio[a:b]
        words = [Word(w.text, max(0.0, w.start - shift), min(len(audio) / SAMPLE_RATE, w.end - shift)) for w in words]
    audio, words = _trim(audio, words)
    audio.setflags(write=False)
    return Utterance(text=text, audio=audio, words=tuple(words))


def _token_map(tokens: list[str], names: list[str]) -> list[int] | None:
    """Input token index of each flite token. flite's token name is the whitespace token with
    its punctuation stripped, and a token of bare prepunctuation (``(``, ``"``) is folded into
    the next token, so names are matched in order as substrings."""
    out, i = [], 0
    for name in names:
        while i < len(tokens) and name not in tokens[i]:
            i += 1
        if i == len(tokens):
            return None
        out.append(i)
        i += 1
    return out


def _align(text: str, raw: list[tuple[int, float, float]], names: list[str], audio: np.ndarray) -> list[Word] | None:
    """The engine's word times per input token, or None if they cannot be matched up."""
    tokens = text.split()
    index = _token_map(tokens, names)
    if index is None:
        return None
    total = len(audio) / SAMPLE_RATE
    spans: dict[int, tuple[float, float]] = {}
    for j, start, end in raw:
        start, end = min(start, total), min(end, total)
        if not 0 <= j < len(index) or end <= start:  # a word with no segments has no time of its own
            continue
        i = index[j]
        a, b = spans.get(i, (start, end))
        spans[i] = (min(a, start), max(b, end))
    spoken = [i for i, t in enumerate(tokens) if _SPOKEN_RE.search(t)]
    if all(i in spans for i in spoken):
        words = [Word(tokens[i], *spans[i]) for i in spoken]
        if all(w.start >= p.end - 1e-6 for p, w in itertools.pairwise(words)):
            return words
    return None


def _proportional(text: str, audio: np.ndarray) -> list[Word]:
    """Fallback: share the loud region of the audio among the spoken tokens by length."""
    texts = [t for t in text.split() if _SPOKEN_RE.search(t)]
    loud = np.nonzero(_frame_db(audio) > _TRIM_DB)[0]
    total = len(audio) / SAMPLE_RATE
    start = loud[0] * _FRAME / SAMPLE_RATE if len(loud) else 0.0
    end = min(total, (loud[-1] + 1) * _FRAME / SAMPLE_RATE) if len(loud) else total
    weights = np.cumsum([0] + [len(t) + 1 for t in texts]) / sum(len(t) + 1 for t in texts)
    cuts = [float(start + w * (end - start)) for w in weights]
    return [Word(t, cuts[k], cuts[k + 1]) for k, t in enumerate(texts)]
