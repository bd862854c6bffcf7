"""espeak-ng speech: text + voice + rate + pitch -> 16 kHz float32 mono audio + word times.

How word times are obtained
---------------------------
The ``espeak-ng`` command line (``--stdout``: a 22050 Hz PCM16 wav) prints no timing, and
synthesizing word by word costs one process per word and loses coarticulation and sentence
intonation. So this module drives the same engine through its C library
(``libespeak-ng.so.1``, part of the espeak-ng package) with ctypes, in synchronous mode:
one ``espeak_Synth`` call per utterance returns the audio *and* the engine's own WORD
events (the word's character offset in the input text, and the audio position at which the
engine starts synthesizing it). For the same text, voice, rate and pitch the samples are
identical to ``espeak-ng --stdout`` up to where the CLI appends its end-of-text pause (tested
against the CLI in a fresh process).

Events -> alignment:

1. The text is split on whitespace into tokens. Every WORD event is assigned to the token
   holding its character offset (a number such as ``10,063`` yields several events, one per
   spoken chunk; they collapse into one token). A token's start is its first event.
2. A token's raw end is the next event boundary after its last event (the next word, a
   clause or sentence end, or the end of the audio).
3. Both edges are then snapped to the audio: whole 5 ms frames (counted from the span's
   start) quieter than -35 dB below the utterance's loudest frame are trimmed from either
   end of the span. This takes the pause the engine inserts at commas and sentence ends
   (and its quiet decay) out of the preceding word.

MBROLA voices (``mb-us1``, ``mb-en1``, ...: espeak-ng's phonemes and prosody, spoken by the
``mbrola`` diphone synthesizer from recorded voices, a family of its own) report a WORD event
for a sentence's first word only, but a PHONEME event for every phoneme, whose character
offset points at its word for a word's first phoneme (later phonemes carry stale offsets). A
word's start is therefore its first non-pause phoneme whose offset falls inside it, taken in
order (`_mbrola_word_events`), moved MBROLA_LAG_MS earlier (the events trail the sound); the
rest of the alignment is the same. They speak at their database's rate (16 kHz for the
English ones).

Tokens with no letters or digits (``-``, ``...``) are not words and are dropped. The engine
runs some short function words together (``of the``, ``for a``: one event); a token without
an event of its own shares its neighbour's span, split in proportion to length (the only
estimated boundary). Leading and trailing silence is trimmed from the utterance (10 ms
kept) and the word times shifted to match.

Measured here: ~1.5 ms of CPU per second of speech including resampling and alignment, no
process spawn; word onsets land on the first frame of the word's energy (the engine emits
the event at the first sample of the word's first phoneme).

Engine state
------------
espeak-ng keeps a little state across utterances (the pitch-flutter phase, the wave phase,
the libc ``rand()`` noise for fricatives): the same call gives the same length, but its
samples, and word times by a few ms, depend on what the *process* synthesized before.
Byte-exact output therefore needs a fresh process per unit of work: ``model.data.generate``
builds each clip in its own process, forked from a server that never synthesizes. The engine
is a per-process singleton (a forked child inherits it, state included); a module lock
serializes callers.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import re
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16_000
ENGINE_RATE = 22_050  # espeak-ng's native rate for its formant voices

_FRAME = 80  # 5 ms at 16 kHz, the resolution of word-edge snapping
_EDGE_DB = -35.0  # frames this far below the loudest frame are silence at a word's edge
_TRIM_DB = -50.0  # same, for trimming the utterance's own leading/trailing silence
_KEEP = 160  # samples of silence kept around the utterance (10 ms)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EV_LIST_TERMINATED, _EV_WORD, _EV_SENTENCE, _EV_END, _EV_MSG_TERMINATED = 0, 1, 2, 5, 6
_EV_PHONEME = 7
MBROLA_PREFIX = "mb-"  # espeak-ng's name for a voice spoken by mbrola
MBROLA_DATA = Path("/usr/share/mbrola")  # where Debian's mbrola-<voice> packages put the databases
# MBROLA's events trail its sound: a word after a pause starts 31-57 ms before its event (us1,
# us3, en1, measured on sound onsets after silence). Moving every event back by the longest
# lag puts a boundary after a pause inside the silence, where snapping finds both edges; a
# word inside a phrase may start up to 30 ms early
MBROLA_LAG_MS = 60
_EE_OK = 0

_WORD_RE = re.compile(r"\S+")
_SPOKEN_RE = re.compile(r"[A-Za-z0-9]")


class EspeakError(RuntimeError):
    """The espeak-ng library is missing or refused a request."""


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the utterance
    end: float


@dataclass(frozen=True)
class Voice:
    """A speaker: an espeak-ng voice spec ``language[+variant]`` plus prosody settings."""

    name: str  # e.g. "en-us+f2", "en-gb-scotland+m3", "en"
    rate: int = 175  # words per minute (espeak-ng -s), 80..450
    pitch: int = 50  # base pitch 0..99 (espeak-ng -p)
    pitch_range: int = 50  # intonation range 0..99 (0 = monotone)

    def synthesize(self, text: str) -> Utterance:
        return synthesize(text, self.name, self.rate, self.pitch, pitch_range=self.pitch_range)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Utterance:
    text: str
    audio: np.ndarray  # float32, mono, SAMPLE_RATE, read-only (results are cached)
    words: tuple[Word, ...]

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset in the input text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds into this utterance's audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union { int; const char *; char[8] }
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Engine:
    """The process-wide espeak-ng library handle (the library itself is a singleton)."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise EspeakError(f"cannot load the espeak-ng library ({e}); install the espeak-ng package") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_GetSampleRate.argtypes = []
        lib.espeak_ng_GetSampleRate.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_DONT_EXIT)
        if rate != ENGINE_RATE:
            raise EspeakError(f"espeak-ng initialization returned {rate}, expected sample rate {ENGINE_RATE}")
        data = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(data)) or b"?").decode()
        self.data_dir = Path((data.value or b"").decode())
        self.lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int]] = []  # type, text_position, length, ms
        self._phonemes: list[tuple[int, int, str]] = []  # text_position, ms, phoneme name
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_audio(self, wav: Any, n: int, events: Any) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EV_LIST_TERMINATED:
            e = events[i]
            if e.type == _EV_PHONEME:
                self._phonemes.append((e.text_position, e.audio_position, e.id.decode("ascii", "replace")))
            else:
                self._events.append((e.type, e.text_position, e.length, e.audio_position))
            i += 1
        return 0  # 0 = continue

    def synth(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int
    ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], int]:
        """int16 audio, events (MBROLA's phonemes turned into word events) and the audio's rate."""
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                self._voice = None
                raise ValueError(f"espeak-ng does not know the voice {voice!r}")
            self._voice = voice
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events, self._phonemes = [], [], []
        buf = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {err} for {text!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        events = self._events
        if voice.startswith(MBROLA_PREFIX):
            events = [e for e in events if e[0] != _EV_WORD] + _mbrola_word_events(text, self._phonemes)
            events = [(t, pos, n, max(0, ms - MBROLA_LAG_MS)) for t, pos, n, ms in events]
        # the voice's rate: MBROLA's is its database's (the SAMPLERATE event comes only when a
        # voice is loaded, so the engine is asked)
        return pcm, events, self.lib.espeak_ng_GetSampleRate()


_lock = threading.Lock()
_engine: _Engine | None = None  # a forked child inherits it, library state included


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


@functools.cache
def list_variants() -> tuple[str, ...]:
    """Voice variants shipped with espeak-ng (the ``+name`` part of a voice spec)."""
    with _lock:
        data_dir = _get_engine().data_dir
    return tuple(sorted(p.name for p in (data_dir / "voices" / "!v").iterdir() if p.is_file()))


@functools.cache
def list_languages(prefix: str = "en") -> tuple[str, ...]:
    """Language voices espeak-ng accepts as the base of a voice spec (the files under
    ``espeak-ng-data/lang``, lower-cased; MBROLA voices are `list_mbrola`'s). ``en`` is
    British English; ``en-gb`` is not a voice file and is refused."""
    with _lock:
        lang_dir = _get_engine().data_dir / "lang"
    names = {p.name.lower() for p in lang_dir.rglob("*") if p.is_file()}
    return tuple(sorted(n for n in names if n == prefix or n.startswith(prefix + "-")))


@functools.cache
def list_mbrola(prefix: str = "en") -> tuple[str, ...]:
    """MBROLA voices (``mb-us1``) for language ``prefix`` that can speak here: espeak-ng's voice
    file, the ``mbrola`` program and the voice's database (Debian's mbrola-<voice> package)."""
    with _lock:
        mb_dir = _get_engine().data_dir / "voices" / "mb"
    if not mb_dir.is_dir() or shutil.which("mbrola") is None:
        return ()
    out = []
    for f in sorted(mb_dir.iterdir()):
        db = f.name.removeprefix(MBROLA_PREFIX)
        lines = f.read_text(errors="replace").splitlines()
        lang = next((ln.split()[1] for ln in lines if ln.startswith("language")), "")
        if "-" not in db and lang.startswith(prefix) and (MBROLA_DATA / db / db).is_file():
            out.append(f.name)
    return tuple(out)


def check_voice(name: str) -> None:
    """Raise ValueError unless ``name`` is ``language[+variant]`` with both parts installed, or
    an installed MBROLA voice. (espeak-ng silently ignores an unknown variant, so this is
    checked here.)"""
    if name.startswith(MBROLA_PREFIX):
        if name not in list_mbrola(""):
            package = "mbrola-" + name.removeprefix(MBROLA_PREFIX)
            raise ValueError(f"MBROLA voice {name!r} is not installed (Debian: mbrola and {package})")
        return
    base, _, variant = name.partition("+")
    if base.lower() not in list_languages(base.split("-")[0].lower()):
        raise ValueError(f"unknown espeak-ng language {base!r} in voice {name!r}")
    if variant and variant not in list_variants():
        raise ValueError(f"unknown espeak-ng variant {variant!r} in voice {name!r}")


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, *, pitch_range: int = 50
) -> Utterance:
    """Speak ``text`` with espeak-ng; return 16 kHz float32 mono audio and per-word times.

    ``voice`` is an espeak-ng voice spec (``en-us``, ``en+m3``, ``en-gb-scotland+f2``);
    ``rate`` is in words per minute, ``pitch`` and ``pitch_range`` in 0..99. Results are
    cached, so the returned audio array is read-only.
    """
    if not isinstance(text, str) or not _SPOKEN_RE.search(text):
        raise ValueError(f"nothing to say in {text!r}")
    if not text.isascii():
        raise ValueError(f"text must be ASCII (word offsets are matched by character): {text!r}")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be within 80..450 words per minute, got {rate}")
    for label, value in (("pitch", pitch), ("pitch_range", pitch_range)):
        if not 0 <= value <= 99:
            raise ValueError(f"{label} must be within 0..99, got {value}")
    return _synthesize_cached(" ".join(text.split()), voice, int(rate), int(pitch), int(pitch_range))


@functools.lru_cache(maxsize=512)
def _synthesize_cached(text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> Utterance:
    with _lock:
        pcm, events, sr = _get_engine().synth(text, voice, rate, pitch, pitch_range)
    audio = pcm.astype(np.float32) / 32768.0
    if sr != SAMPLE_RATE:
        audio = resample_poly(audio, SAMPLE_RATE, sr).astype(np.float32)
    words = _align(text, events, audio)
    audio, words = _trim(audio, words)
    audio.setflags(write=False)
    return Utterance(text=text, audio=audio, words=tuple(words))


def _frame_rms(audio: np.ndarray) -> np.ndarray:
    n = max(1, -(-len(audio) // _FRAME))
    padded = np.zeros(n * _FRAME, np.float32)
    padded[: len(audio)] = audio
    return np.sqrt(np.mean(padded.reshape(n, _FRAME) ** 2, axis=1) + 1e-20)


def _frame_db(audio: np.ndarray) -> np.ndarray:
    rms = _frame_rms(audio)
    return 20.0 * np.log10(rms / max(float(rms.max()), 1e-10))


def _snap(audio: np.ndarray, start: float, end: float, ref: float) -> tuple[float, float]:
    """Move a span's edges inward past whole 5 ms frames (counted from the span's own start)
    whose RMS is below ``ref``; a span with no loud frame is left alone."""
    a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
    n = (b - a) // _FRAME
    if n <= 0:
        return float(start), float(end)
    rms = np.sqrt(np.mean(audio[a : a + n * _FRAME].reshape(n, _FRAME) ** 2, axis=1))
    loud = np.nonzero(rms > ref)[0]
    if not len(loud):
        return float(start), float(end)
    new_start = (a + loud[0] * _FRAME) / SAMPLE_RATE
    new_end = end if loud[-1] == n - 1 else (a + (loud[-1] + 1) * _FRAME) / SAMPLE_RATE
    return float(new_start), float(new_end)


def _align(text: str, events: list[tuple[int, int, int, int]], audio: np.ndarray) -> list[Word]:
    tokens = [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]
    starts = [t[0] for t in tokens]
    total = len(audio) / SAMPLE_RATE
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    boundaries = {total}
    for etype, pos, length, ms in events:
        if etype not in (_EV_WORD, _EV_SENTENCE, _EV_END, _EV_MSG_TERMINATED):
            continue
        t = min(ms / 1000.0, total)
        boundaries.add(t)
        if etype != _EV_WORD or length <= 0 or not tokens:
            continue
        i = max(0, bisect.bisect_right(starts, pos - 1) - 1)
        # an offset in whitespace or on a bare punctuation token belongs to the next word
        while i + 1 < len(tokens) and (pos - 1 >= tokens[i][1] or not _SPOKEN_RE.search(tokens[i][2])):
            i += 1
        first[i] = min(first.get(i, t), t)
        last[i] = max(last.get(i, t), t)
    bounds = sorted(boundaries)

    # tokens that got no event of their own join the previous timed token (or the next one)
    groups: list[tuple[list[str], int]] = []  # (texts, index of the timed token)
    pending: list[str] = []
    for i, (_, _, tok) in enumerate(tokens):
        if not _SPOKEN_RE.search(tok):
            continue
        if i in first:
            groups.append(([*pending, tok], i))
            pending = []
        elif groups:
            groups[-1][0].append(tok)
        else:
            pending.append(tok)
    if pending and groups:
        groups[-1][0].extend(pending)

    ref = _frame_rms(audio).max() * 10 ** (_EDGE_DB / 20)
    words: list[Word] = []
    for texts, i in groups:
        start = first[i]
        end = next((b for b in bounds if b > last[i] + 1e-6), total)
        start, end = _snap(audio, start, end, ref)
        end = max(end, start + 0.01 * len(texts))
        # the engine runs short function words together ("of the": one event); share the span
        weights = np.cumsum([0] + [len(t) + 1 for t in texts]) / (sum(len(t) + 1 for t in texts))
        cuts = [start + float(w) * (end - start) for w in weights]
        words.extend(Word(t, cuts[k], cuts[k + 1]) for k, t in enumerate(texts))
    return words


def _mbrola_word_events(text: str, phonemes: list[tuple[int, int, str]]) -> list[tuple[int, int, int, int]]:
    """One WORD event per token, at the first non-pause phoneme whose 1-based offset falls in
    it, tokens in order: a phoneme pointing back at an earlier word is a stale offset."""
    tokens = [(m.start(), m.end()) for m in _WORD_RE.finditer(text)]
    out: list[tuple[int, int, int, int]] = []
    last = -1
    for pos, ms, name in phonemes:
        if name.startswith("_"):  # a pause
            continue
        i = next((k for k, (a, b) in enumerate(tokens) if a <= pos - 1 < b), None)
        if i is not None and i > last:
            out.append((_EV_WORD, pos, tokens[i][1] - tokens[i][0], ms))
            last = i
    return out


def _trim(audio: np.ndarray, words: list[Word]) -> tuple[np.ndarray, list[Word]]:
    db = _frame_db(audio)
    loud = np.nonzero(db > _TRIM_DB)[0]
    if not len(loud):
        return audio.copy(), words
    a = max(0, loud[0] * _FRAME - _KEEP)
    b = min(len(audio), (loud[-1] + 1) * _FRAME + _KEEP)
    if words:
        a = min(a, round(words[0].start * SAMPLE_RATE))
        b = max(b, round(words[-1].end * SAMPLE_RATE))
    a, b = int(a), int(b)
    shift, dur = a / SAMPLE_RATE, (b - a) / SAMPLE_RATE
    out = [Word(w.text, max(0.0, float(w.start) - shift), min(dur, float(w.end) - shift)) for w in words]
    return audio[a:b].copy(), out


def synthesize_cli(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """The same utterance through the ``espeak-ng --stdout`` command: int16 at ENGINE_RATE,
    untrimmed. For cross-checking the library path; it carries no word times."""
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    if out[:4] != b"RIFF":
        raise EspeakError(f"espeak-ng --stdout did not write a wav for {text!r}")
    pos = 12
    while pos + 8 <= len(out):  # walk the RIFF chunks to 'data' (the CLI's sizes may be 0)
        cid, size = out[pos : pos + 4], int.from_bytes(out[pos + 4 : pos + 8], "little")
        if cid == b"data":
            body = out[pos + 8 :]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").copy()
        pos += 8 + size
    raise EspeakError("no data chunk in espeak-ng output")
