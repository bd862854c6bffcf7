"""flite wrapper: 16 kHz audio, word times from the engine's segments mapped to the input
tokens, prosody controls, sample-exact determinism, and speech an ASR can read."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from model.data import flite
from model.data.espeak import SAMPLE_RATE
from model.data.flite import FliteError, FliteVoice, synthesize

pytestmark = pytest.mark.skipif(not flite.list_voices(), reason="flite is not installed (Debian package flite)")

TEXT = "Hello, Dr. Smith - I have 42 cats, and they're all asleep."


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _f0(x: np.ndarray) -> float:
    """Median autocorrelation pitch of the loud 40 ms frames (enough to compare two shifts)."""
    peak, out = float(np.abs(x).max()), []
    for i in range(0, len(x) - 640, 320):
        s = x[i : i + 640].astype(np.float64)
        s -= s.mean()
        if _rms(s) < 0.05 * peak:
            continue
        ac = np.correlate(s, s, "full")[639:]
        lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.5 * ac[0]:
            out.append(SAMPLE_RATE / k)
    return float(np.median(out))


def test_installed_voices() -> None:
    assert set(flite.list_voices()) <= set(flite.VOICES)
    assert "slt" in flite.list_voices()


@pytest.mark.parametrize("voice", ["slt", "kal16"])
def test_audio_format_and_words_are_the_input_tokens(voice: str) -> None:
    utt = synthesize(TEXT, voice)
    assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
    assert not utt.audio.flags.writeable  # cached results are shared
    assert 0 < np.abs(utt.audio).max() <= 1.0
    assert 2.0 < utt.duration < 8.0
    # the original tokens, punctuation kept; the bare "-" is not a word
    assert [w.text for w in utt.words] == [t for t in TEXT.split() if t != "-"]
    for a, b in zip(utt.words, utt.words[1:], strict=False):
        assert a.start < a.end <= b.start + 1e-9
    assert utt.words[0].start >= 0.0 and utt.words[-1].end <= utt.duration + 1e-9
    assert all(isinstance(w.start, float) and isinstance(w.end, float) for w in utt.words)


def test_number_is_one_word_spanning_its_spoken_words() -> None:
    utt = synthesize("I have 42 cats.", "slt")
    assert [w.text for w in utt.words] == ["I", "have", "42", "cats."]
    have, n, cats = utt.words[1:]
    # "forty two" is two spoken words: longer than "have" and "cats." on their own
    assert n.end - n.start > 1.5 * (have.end - have.start)
    assert n.start == pytest.approx(have.end) and n.end == pytest.approx(cats.start)


def test_bare_punctuation_tokens_are_skipped() -> None:
    """flite folds a bare opening bracket or quote into the next token; words still line up."""
    text = 'He said ( quietly ) " yes " - then left.'
    utt = synthesize(text, "kal16")
    assert [w.text for w in utt.words] == ["He", "said", "quietly", "yes", "then", "left."]
    assert flite._align(text, [(0, 0.1, 0.2)], ["He", "said"], utt.audio) is None  # words missing
    assert flite._token_map(text.split(), ["He", "said", ")", "yes", "-", "then", "left"]) == [0, 1, 4, 6, 8, 9, 10]
    assert flite._token_map(["a", "b"], ["a", "c"]) is None


@pytest.mark.skipif(shutil.which("flite") is None, reason="no flite command")
def test_word_ends_are_the_cli_segment_ends() -> None:
    """Cross-check of the feature paths: before trimming, word edges are segment ends that
    ``flite -psdur`` prints (a word starts where the segment before it ends)."""
    text = "Paris is lovely in the spring."
    with flite._engine_lock:
        _, _, raw, names = flite._get_engine().synth(text, "slt", 1.0, 1.0)
    out = subprocess.run(
        ["flite", "-voice", "slt", "-psdur", "-t", text, "-o", "none"], capture_output=True, text=True, check=True
    ).stdout
    ends = [float(seg.rsplit(":", 1)[1]) for seg in out.split()]
    assert names == ["Paris", "is", "lovely", "in", "the", "spring"]
    assert len(raw) == 6
    for _, start, end in raw:
        assert min(abs(start - e) for e in ends) < 1e-3
        assert min(abs(end - e) for e in ends) < 1e-3
    assert raw[0][1] == pytest.approx(ends[0], abs=1e-3)  # after the leading pause
    assert raw[-1][2] == pytest.approx(ends[-2], abs=1e-3)  # before the trailing pause


@pytest.mark.parametrize("voice", ["slt", "awb", "kal16"])
def test_word_spans_hold_the_speech(voice: str) -> None:
    """Every word's span is loud; the pause after the sentence break sits between words and is
    far quieter."""
    utt = synthesize("The train was late. We waited an hour in the cold.", voice)
    sr = SAMPLE_RATE
    whole = _rms(utt.audio)
    for w in utt.words:
        seg = utt.audio[round(w.start * sr) : round(w.end * sr)]
        assert _rms(seg) > 0.3 * whole, w
    late = next(i for i, w in enumerate(utt.words) if w.text == "late.")
    gap = utt.audio[round(utt.words[late].end * sr) : round(utt.words[late + 1].start * sr)]
    assert len(gap) > 0.1 * sr
    assert _rms(gap) < 0.1 * whole
    # the leading/trailing pause is trimmed to a few ms around the words
    assert utt.words[0].start < 0.03 and utt.duration - utt.words[-1].end < 0.03


def test_stretch_slows_speech_and_keeps_words() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    base = FliteVoice("slt").synthesize(text)
    slow = FliteVoice("slt", stretch=1.3).synthesize(text)
    assert slow.duration > 1.2 * base.duration
    assert [w.text for w in slow.words] == [w.text for w in base.words]
    assert slow.words[-1].end > 1.2 * base.words[-1].end


@pytest.mark.parametrize("voice", ["slt", "awb", "kal16"])
def test_f0_shift_moves_pitch(voice: str) -> None:
    text = "This is a simple test of the speech synthesizer voice."
    base = _f0(np.asarray(synthesize(text, voice).audio))
    up = _f0(np.asarray(synthesize(text, voice, f0_shift=5.0).audio))
    assert up / base == pytest.approx(2 ** (5 / 12), rel=0.08)


def test_f0_shift_refused_where_ignored() -> None:
    with pytest.raises(ValueError, match="rms"):
        FliteVoice("rms", f0_shift=2.0)
    FliteVoice("rms", stretch=1.1)  # stretch is fine


def test_same_call_gives_identical_audio_whatever_came_before() -> None:
    """The clustergen voices draw excitation noise from libc rand(); it is reseeded per call."""
    uncached = flite._synthesize_cached.__wrapped__
    first = uncached("Good morning, how are you?", "slt", 1.0, 0.0)
    uncached("Something else entirely, to move the random state.", "awb", 1.1, 2.0)
    second = uncached("Good morning, how are you?", "slt", 1.0, 0.0)
    assert np.array_equal(first.audio, second.audio)
    assert first.words == second.words
    assert synthesize("Good morning, how are you?", "slt") is synthesize("Good morning,  how are you?", "slt")


def test_identical_across_processes() -> None:
    code = textwrap.dedent(
        """
        import hashlib
        from model.data.flite import synthesize
        u = synthesize("Good morning, how are you?", "awb", 1.1)
        print(hashlib.sha256(u.audio.tobytes()).hexdigest())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    synthesize("Another sentence first.", "awb")
    here = flite._synthesize_cached.__wrapped__("Good morning, how are you?", "awb", 1.1, 0.0)
    assert hashlib.sha256(here.audio.tobytes()).hexdigest() == out


def test_unknown_voice_raises_flite_error_naming_it() -> None:
    with pytest.raises(FliteError, match="nosuchvoice"):
        FliteVoice("nosuchvoice")
    with pytest.raises(FliteError, match="nosuchvoice"):
        synthesize("hello", "nosuchvoice")


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError):
        synthesize("-- ...", "slt")
    with pytest.raises(ValueError):
        FliteVoice("slt", stretch=5.0)


def test_to_dict_names_the_engine() -> None:
    assert FliteVoice("kal16", stretch=1.2, f0_shift=-2.0).to_dict() == {
        "engine": "flite",
        "name": "kal16",
        "stretch": 1.2,
        "f0_shift": -2.0,
    }


def test_unmatched_tokens_fall_back_to_proportional_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flite, "_align", lambda *a: None)
    utt = flite._synthesize_cached.__wrapped__("One two three four.", "kal16", 1.0, 0.0)
    assert [w.text for w in utt.words] == ["One", "two", "three", "four."]
    for a, b in zip(utt.words, utt.words[1:], strict=False):
        assert a.start < a.end == pytest.approx(b.start)
    assert utt.words[-1].end <= utt.duration + 1e-9


def test_pocketsphinx_reads_slt() -> None:
    pytest.importorskip("pocketsphinx")
    from model.eval.asr import transcribe_span

    text = "Please tell me the time of the next train home."
    ref = [t.strip(".,?").lower() for t in text.split()]
    hyp = [w.text.lower() for w in transcribe_span(np.asarray(synthesize(text, "slt").audio))]
    # word error rate by edit distance
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    assert d[-1] / len(ref) <= 0.5, hyp
