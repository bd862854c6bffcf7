"""`microturn eval --live` sends a clip's video: its frames reach the model's inputs, in order."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from infra import keys
from infra.messages import MicroTurnInput
from model.eval import synth
from model.eval.frames import write_frames
from model.eval.layout import discover
from model.eval.live import LiveResponder
from model.eval.runner import clip_input
from tests.e2e.aiortc_server import edge_settings, running_edge

pytestmark = pytest.mark.timeout(60)

COLOURS = np.array([(220, 30, 30), (30, 200, 60), (30, 60, 220)], np.uint8)  # 1 s each


async def test_live_eval_sends_the_clip_frames_to_the_model(tmp_path: Path) -> None:
    d = synth.cue_clip(tmp_path, "v", cues=(1.5,), duration=3.0)  # any clip; give it a camera
    write_frames(d, np.repeat(COLOURS, 5, axis=0)[:, None, None, :] * np.ones((1, 120, 160, 1), np.uint8))
    inp = clip_input(discover(tmp_path)[0])
    assert inp.video is not None and len(inp.video) == 15

    async with running_edge(edge_settings(video_fps=5.0)) as edge:
        inputs = edge.rt.bus.subscribe(keys.inputs("local"), maxsize=1024)  # what reaches the worker
        resp = await LiveResponder(edge.url).respond_async(inp)
        sent: list[MicroTurnInput] = []
        while True:
            try:
                sent.append(msgspec.msgpack.decode(await inputs.get(timeout=0.05), type=MicroTurnInput))
            except TimeoutError:
                break

    seen = [(i.turn, i.video_array()) for i in sent if i.video is not None]
    print(f"{len(seen)} of {len(sent)} turns carried a frame")
    assert len(seen) >= 8, f"only {len(seen)} of {len(sent)} turns carried a frame"
    assert resp.info["video_frames_sent"] >= 15 and len(resp.audio) == len(inp.audio)
    # each frame is one of the clip's colours after VP8, and they arrive in the clip's order
    which = []
    for _, v in seen:
        assert v is not None
        dist = np.abs(COLOURS.astype(int) - v[40:80, 60:100].reshape(-1, 3).mean(axis=0)).max(axis=1)
        assert dist.min() < 40, f"a frame matching no clip colour: {v[60, 80]}"
        which.append(int(dist.argmin()))
    assert which == sorted(which) and len(set(which)) >= 2
