"""The prefill and decode steps under torch.compile(fullgraph=True) equal eager, across slot churn.

fullgraph=True fails on any graph break (a host read, data-dependent Python): that every
batch size and prefill bucket met captures whole is shown with the "aot_eager" backend (the
same graphs, no code generation: quick to build); inductor's generated code is checked on one
session, its prefill bucket and decode step (each graph takes it tens of seconds to build)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.messages import MicroTurnInput, MicroTurnOutput
from model.engine import Engine
from model.interaction import InteractionModel
from model.tokenizer import Tokenizer
from tests.model.conftest import micro_config
from tests.model.test_engine import session_inputs

pytestmark = pytest.mark.slow


def make_engine(tokenizer: Tokenizer, compile: bool | str, deterministic: bool = False) -> Engine:
    torch.manual_seed(0)
    model = InteractionModel(micro_config(deterministic=deterministic)).eval()
    return Engine(model, tokenizer, max_sessions=4, compile=compile)


def churn(engine: Engine) -> tuple[list[MicroTurnOutput], dict[str, list[torch.Tensor]]]:
    """Three sessions; the middle one leaves after two turns (the last moves into its slot),
    a new one joins a turn later: every step batches all open sessions."""
    for i in range(3):
        engine.open(f"s{i}", seed=i, trace=True)
    feeds = {i: session_inputs(i, 6) for i in range(4)}
    outs: list[MicroTurnOutput] = []
    hidden: dict[str, list[torch.Tensor]] = {f"s{i}": [] for i in range(4)}
    live = [0, 1, 2]
    for k in range(5):
        if k == 2:
            engine.close("s1")
            live.remove(1)
        if k == 3:
            engine.open("s3", seed=3, trace=True)
            live.append(3)
        outs += engine.step([feeds[i][k] for i in live])
        for i in live:
            t = engine.session(f"s{i}").trace
            assert t is not None
            hidden[f"s{i}"].append(t[-1].hidden)
    return outs, hidden


@pytest.mark.timeout(600)  # dynamo traces a graph per batch size and bucket: ~1 min on a quiet 2-core box
def test_compiled_steps_equal_eager_through_slot_churn(tokenizer: Tokenizer) -> None:
    """Three batch sizes, every prefill bucket with and without a camera frame."""
    eager = make_engine(tokenizer, compile=False)
    compiled = make_engine(tokenizer, compile="aot_eager")
    assert eager.decode_step == "eager"
    assert compiled.decode_step.startswith("compiled")
    (a, ha), (b, hb) = churn(eager), churn(compiled)
    for sid in ha:  # every position's hidden state, input and output positions, every turn
        for he, hc in zip(ha[sid], hb[sid], strict=True):
            torch.testing.assert_close(hc, he, atol=1e-4, rtol=1e-4)
    assert [(o.session_id, o.turn) for o in a] == [(o.session_id, o.turn) for o in b]
    for x, y in zip(a, b, strict=True):
        assert x.text_tokens == y.text_tokens, (x.session_id, x.turn)
        assert x.caption_tokens == y.caption_tokens
        # the compiled kernels round differently (~1e-6 in the mel); Griffin-Lim's 32 iterations
        # and its carried phase amplify that to ~1e-2 in the waveform: compare the energy
        np.testing.assert_allclose(np.abs(x.audio_array()).mean(), np.abs(y.audio_array()).mean(), rtol=1e-2)


def test_deterministic_mode_says_it_runs_eager(tokenizer: Tokenizer) -> None:
    """Its per-session attention selects each session's real keys (a data-dependent shape)."""
    assert make_engine(tokenizer, compile=True, deterministic=True).decode_step == "eager"


@pytest.mark.timeout(900)  # inductor builds C++ for two graphs: ~2 min on a quiet 2-core box
def test_inductor_steps_equal_eager(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """One session, audio alone: the 4-position prefill bucket and the decode step, as code
    inductor generated. Both write their keys and values into the cache in place: no op of
    their graphs builds a tensor the size of a layer's cache (functionalized, the index_put
    into the cache rewrote every slot's window, layer after layer: 2 s instead of 67 ms a
    step for 4 tiny sessions in a pool of 64)."""
    graphs: list[torch.fx.Graph] = []
    monkeypatch.setattr(torch._inductor.config, "post_grad_custom_post_pass", graphs.append)
    engines = [make_engine(tokenizer, compile=c) for c in (False, True)]
    outs = []
    for e in engines:
        e.open("s0", seed=0, trace=True)
        feed = [replace_media(i) for i in session_inputs(0, 3)]
        outs.append([e.step([i])[0] for i in feed])
    (a, b), (ea, eb) = outs, engines
    for x, y in zip(a, b, strict=True):
        assert x.text_tokens == y.text_tokens and x.caption_tokens == y.caption_tokens
    ta, tb = ea.session("s0").trace, eb.session("s0").trace
    assert ta is not None and tb is not None
    for he, hc in zip(ta, tb, strict=True):
        torch.testing.assert_close(hc.hidden, he.hidden, atol=1e-4, rtol=1e-4)
    assert len(graphs) == 2  # the prefill and the decode step
    layer = eb.cache.k[0].numel()
    for g in graphs:
        built = {str(n.target) for n in g.nodes if _builds(n) and n.meta["val"].numel() >= layer}
        assert not built, built


def _builds(n: torch.fx.Node) -> bool:
    """An op node that returns a new tensor: not a view of an argument, nor an argument written
    in place (the cache's write-back copy_, which inductor drops when the buffer is the cache)."""
    if n.op != "call_function" or not isinstance(n.meta.get("val"), torch.Tensor):
        return False
    schema = getattr(n.target, "_schema", None)
    return schema is None or not any(r.alias_info for r in schema.returns)


def replace_media(inp: MicroTurnInput) -> MicroTurnInput:
    """The input with its audio alone (no frame, no typed or background text)."""
    return MicroTurnInput(audio=inp.audio, session_id=inp.session_id, turn=inp.turn)
