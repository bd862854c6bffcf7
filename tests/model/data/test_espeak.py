"""espeak-ng wrapper: 16 kHz audio, word times that sit on the speech, CLI-identical samples."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from model.data import espeak
from model.data.espeak import SAMPLE_RATE, synthesize

TEXT = "What is 347 times 29? It's about the history of the bicycle, for a change."


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def test_audio_format_and_word_order() -> None:
    utt = synthesize(TEXT, "en-us+f2", rate=170, pitch=55)
    assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
    assert not utt.audio.flags.writeable  # cached results are shared
    assert 2.0 < utt.duration < 8.0
    assert 0 < np.abs(utt.audio).max() <= 1.0
    texts = [w.text for w in utt.words]
    # one entry per written word; a number spoken as several chunks stays one word
    assert texts == TEXT.split()
    for a, b in zip(utt.words, utt.words[1:], strict=False):
        assert a.start < a.end <= b.start + 1e-9
    assert utt.words[0].start >= 0.0 and utt.words[-1].end <= utt.duration + 1e-9
    assert all(isinstance(w.start, float) and isinstance(w.end, float) for w in utt.words)


def test_word_spans_hold_the_speech() -> None:
    """Speech energy is inside word spans; the pause after the question is outside them."""
    utt = synthesize(TEXT, "en+m3", rate=160)
    sr = SAMPLE_RATE
    inside = np.zeros(len(utt.audio), bool)
    for w in utt.words:
        seg = utt.audio[round(w.start * sr) : round(w.end * sr)]
        assert _rms(seg) > 0.01, w
        inside[round(w.start * sr) : round(w.end * sr)] = True
    # (almost) all of the signal energy is inside the word spans
    energy = np.square(utt.audio, dtype=np.float64)
    assert energy[inside].sum() / energy.sum() > 0.99
    # the sentence break after "29?" is a gap between words, and it is quiet
    q = next(i for i, w in enumerate(utt.words) if w.text == "29?")
    gap = utt.audio[round(utt.words[q].end * sr) : round(utt.words[q + 1].start * sr)]
    assert len(gap) > 0.1 * sr and _rms(gap) < 0.01 * _rms(utt.audio)


def test_rate_changes_duration_but_not_words() -> None:
    slow = synthesize("The quick brown fox jumps over the lazy dog.", "en-us", rate=120)
    fast = synthesize("The quick brown fox jumps over the lazy dog.", "en-us", rate=240)
    assert slow.duration > 1.5 * fast.duration
    assert [w.text for w in slow.words] == [w.text for w in fast.words]


def test_voices_differ() -> None:
    a = synthesize("Hello there, how are you?", "en-us+f2")
    b = synthesize("Hello there, how are you?", "en+m3")
    n = min(len(a.audio), len(b.audio))
    assert not np.allclose(a.audio[:n], b.audio[:n], atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(text="", voice="en-us"), "nothing to say"),
        (dict(text=" ... ", voice="en-us"), "nothing to say"),
        (dict(text="caf\u00e9 au lait", voice="en-us"), "ASCII"),
        (dict(text="hello", voice="en-us", rate=20), "rate"),
        (dict(text="hello", voice="en-us", pitch=120), "pitch"),
        (dict(text="hello", voice="zz-nothing"), "voice"),
    ],
)
def test_bad_requests_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthesize(**kwargs)


def test_check_voice() -> None:
    espeak.check_voice("en-us+f2")
    espeak.check_voice("en-gb-scotland+Annie")
    with pytest.raises(ValueError, match="variant"):
        espeak.check_voice("en-us+nobody")  # espeak-ng itself would silently ignore it
    with pytest.raises(ValueError, match="language"):
        espeak.check_voice("en-gb+f2")  # British English is "en"
    assert "en" in espeak.list_languages() and "en-us" in espeak.list_languages()
    assert {"f2", "m3", "Annie"} <= set(espeak.list_variants())


def test_library_matches_cli_in_fresh_process() -> None:
    """Driven through the library, the engine writes the same samples as `espeak-ng --stdout`
    (in a fresh process: the engine carries state between utterances), minus the CLI's end pause."""
    code = textwrap.dedent(
        """
        import numpy as np
        from model.data import espeak
        text = "Say tick every three seconds until I say stop."
        pcm, _, rate = espeak._get_engine().synth(text, "en-us+f2", 160, 40, 50)
        assert rate == espeak.ENGINE_RATE
        cli = espeak.synthesize_cli(text, "en-us+f2", 160, 40)
        n = len(pcm)
        assert n > 20000 and len(cli) >= n, (n, len(cli))
        assert np.array_equal(pcm, cli[:n])
        # the CLI adds an end-of-text pause; what the library leaves out of it is a quiet decay
        assert np.abs(cli[n:]).max() < 330
        print("same")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "same"


# MBROLA voices ---------------------------------------------------------------------------------
@pytest.mark.parametrize("voice", ["mb-us1", "mb-us2", "mb-en1"])
def test_mbrola_voices_speak_every_word_on_its_sound(voice: str) -> None:
    utt = synthesize(TEXT, voice, rate=165, pitch=50)
    assert [w.text for w in utt.words] == TEXT.split()
    for a, b in zip(utt.words, utt.words[1:], strict=False):
        assert a.start < a.end <= b.start + 1e-9
    sr = SAMPLE_RATE
    inside = np.zeros(len(utt.audio), bool)
    for w in utt.words:
        inside[round(w.start * sr) : round(w.end * sr)] = True
    energy = np.square(utt.audio, dtype=np.float64)
    assert energy[inside].sum() / energy.sum() > 0.98
    # the pause after "29?" lies between words: the next word starts where its sound does
    # (MBROLA's events trail the sound by 30-60 ms, corrected by MBROLA_LAG_MS)
    q = next(i for i, w in enumerate(utt.words) if w.text == "29?")
    after = utt.words[q + 1]
    loud = np.nonzero(espeak._frame_db(utt.audio) > -35.0)[0] * 0.005
    onset = loud[loud >= utt.words[q].end + 0.05][0]
    assert abs(after.start - onset) <= 0.015, (after, onset)
    assert after.start - utt.words[q].end > 0.1


def test_mbrola_word_events_take_each_words_first_sounding_phoneme() -> None:
    text = "Well, 25 okay."  # tokens at 1-based offsets 1, 7, 10
    phonemes = [
        (1, 10, "w"),
        (0, 60, "E"),
        (1, 80, "l"),  # a later phoneme of the same word
        (5, 120, "_:"),  # the comma's pause, pointing at the comma
        (7, 300, "t"),
        (8, 420, "f"),  # "five" of the same number token
        (3, 470, "aI"),  # a stale offset back into "Well,"
        (10, 600, "oU"),
    ]
    events = espeak._mbrola_word_events(text, phonemes)
    assert [(pos, ms) for _, pos, _, ms in events] == [(1, 10), (7, 300), (10, 600)]


def test_mbrola_voices_are_listed_and_checked() -> None:
    assert {"mb-us1", "mb-us2", "mb-en1"} <= set(espeak.list_mbrola())
    espeak.check_voice("mb-us1")
    with pytest.raises(ValueError, match="MBROLA voice 'mb-zz9' is not installed"):
        espeak.check_voice("mb-zz9")


def test_mbrola_keeps_its_rate_across_utterances() -> None:
    """The engine announces MBROLA's 16 kHz only when the voice is loaded: later utterances in
    the same voice must not be read at the formant voices' 22,050 Hz."""
    uncached = espeak._synthesize_cached.__wrapped__
    first = uncached("Let the dough rise for two hours.", "mb-en1", 170, 50, 50)
    uncached("Then bake it.", "mb-en1", 170, 50, 50)
    again = uncached("Let the dough rise for two hours.", "mb-en1", 170, 50, 50)
    # the engine's state between utterances moves a few ms; a wrong rate would move 27 %
    assert len(again.audio) == pytest.approx(len(first.audio), rel=0.02)
    assert again.words[-1].end == pytest.approx(first.words[-1].end, abs=0.02)
