"""Speech and caption word error rates, and the recorded-voice / vocoder ceilings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.eval.intelligibility import SAMPLE_RATE, Wer, edit_distance, main, normalize, reference, spoken_words
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config

SENTENCE = "please tell me the weather in paris today"


def test_normalize_and_pooled_wer() -> None:
    assert normalize("Sure, it's 5 o'clock!") == ["sure", "it's", "five", "o'clock"]
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2  # one substitution, one insertion
    wer = Wer()
    wer.add(["a", "b"], ["a", "b"])
    wer.add(["c", "d", "e", "f"], ["c"])  # three deletions
    wer.add([], [])  # nothing said, nothing heard: not a clip
    assert (wer.edits, wer.words, wer.clips) == (3, 6, 2) and wer.rate == 0.5
    assert Wer().rate is None


def test_numerals_are_compared_as_the_words_heard() -> None:
    """The text writes digits, the ASR writes words: both read the same, so no spurious errors."""
    assert normalize("It's 56.") == ["it's", "fifty", "six"]
    heard = "leave at three forty five it's one thousand steps"
    assert normalize("Leave at 3:45, it's 1,000 steps.") == normalize(heard)
    wer = Wer()
    wer.add(normalize("The answer is 56."), normalize("the answer is fifty six"))
    assert (wer.edits, wer.words) == (0, 5)
    wer.add(normalize("Sum: 2.5"), normalize("some two point five"))  # a real mishearing still counts
    assert (wer.edits, wer.words) == (1, 9)


def dialogue(tmp: Path, assistant: str | None, user: str = "hello there") -> Path:
    """A two-channel dialogue in the model/data layout: flite slt as the assistant on channel 0
    (or silence), nothing on the user channel; alignments name both speakers' words."""
    n = 3 * SAMPLE_RATE
    voice = np.zeros(n, np.float32)
    words: list[list[object]] = [[w, [0.1, 0.2], "SPEAKER_USER"] for w in user.split()]
    if assistant is not None:
        (tmp / "raw").mkdir(exist_ok=True)
        raw = tmp / "raw" / "flite.wav"  # not among the dialogues
        subprocess.run(["flite", "-voice", "slt", "-t", assistant, "-o", str(raw)], check=True, capture_output=True)
        x, sr = sf.read(raw, dtype="float32")
        x = np.interp(np.arange(0, len(x), sr / SAMPLE_RATE), np.arange(len(x)), x).astype(np.float32)
        voice[SAMPLE_RATE // 4 : SAMPLE_RATE // 4 + len(x)] = x[: n - SAMPLE_RATE // 4]
        words += [[w, [0.5, 0.6], "SPEAKER_MAIN"] for w in assistant.split()]
    wav = tmp / f"{len(list(tmp.glob('*.json'))):06d}.wav"
    sf.write(wav, np.stack([voice, np.zeros(n, np.float32)], axis=1), SAMPLE_RATE)
    wav.with_suffix(".json").write_text(json.dumps({"alignments": words}))
    return wav


def test_spoken_words_by_speaker(tmp_path: Path) -> None:
    wav = dialogue(tmp_path, None, user="what time is it")
    assert spoken_words(wav) == "what time is it"
    assert spoken_words(wav, "SPEAKER_MAIN") == ""


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")
def test_reference_reads_the_recorded_voice_and_its_vocoded_copy(tmp_path: Path) -> None:
    """The ASR reads flite's voice (the one the model learns) nearly right; a dialogue where the
    assistant says nothing is not counted."""
    wavs = [dialogue(tmp_path, SENTENCE), dialogue(tmp_path, None)]
    direct, vocoded = reference(wavs, ModelConfig(), log=False)
    assert (direct.clips, direct.words) == (1, 8) and (vocoded.clips, vocoded.words) == (1, 8)
    assert direct.rate is not None and direct.rate <= 0.25
    assert vocoded.rate is not None


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")
def test_reference_hears_a_written_number_as_its_words(tmp_path: Path) -> None:
    """flite says "2,418." as "two thousand four hundred eighteen" and the ASR writes that back:
    compared as written it would cost 5 edits over 5 words, as words it costs (about) none."""
    direct, _ = reference([dialogue(tmp_path, "The answer is 2,418.")], ModelConfig(), log=False)
    assert direct.words == 8
    assert direct.rate is not None and direct.rate <= 0.25


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")
def test_cli_writes_every_figure(tmp_path: Path, tokenizer: Tokenizer) -> None:
    data = tmp_path / "dialogues"
    data.mkdir()
    dialogue(data, SENTENCE, user="what is the weather")
    ck = save_checkpoint(tmp_path / "ck", InteractionModel(micro_config()), tokenizer)
    out = tmp_path / "intel.json"
    assert main(["--checkpoint", str(ck), "--dialogues", str(data), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["caption_words"] == 4  # the user's words, against whatever an untrained caption head says
    assert got["reference_voice_wer"] <= 0.25 and got["reference_vocoded_wer"] is not None
    assert [c["spoken"] for c in got["clips"]] == ["what is the weather"]
    assert main(["--checkpoint", str(ck), "--dialogues", str(tmp_path / "none")]) == 2  # no dialogues: says so
