"""The media plane: frames in and out of a call.

Inbound: `Resampler` (any aiortc/PyAV audio frame -> 16 kHz mono float32 on the media clock),
`VideoSampler` (any video frame -> <= 1 frame per micro-turn, 160x120 RGB) and
`MicroTurnAssembler` (both, plus typed text -> `infra.messages.MicroTurnInput` every 200 ms of
media time). Outbound: `OutputAudioTrack` (model audio -> paced 20 ms frames for aiortc).

Submodules are imported explicitly (`from media.assembler import MicroTurnAssembler`) so code
that only needs the pure-numpy assembler never imports aiortc.
"""
