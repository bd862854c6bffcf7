"""`microturn eval`: Full-Duplex-Bench v1 metrics for the interaction model and a harness baseline.

- layout.py    the FD-bench directory layout (clips, task kinds, reading/writing audio + json)
- vad.py       energy VAD -> speech segments (the cross-check)
- silero.py    Silero VAD -> speech segments, as FD-bench (optional `eval` extra)
- asr.py       pocketsphinx ASR of output audio -> timed words, as FD-bench (optional `eval` extra)
- words.py     timed words: output.json, and words from the model's own text stream
- metrics.py   the FD-bench formulas (fdbench.md) and TimeSpeak, pure functions
- cue_metrics.py speaking on a cue (ours): rep counting, visual alerts and questions, CueSpeak
- frames.py    a clip's video: frames/ PNGs or input.mp4, one 160x120 frame per micro-turn
- runner.py    Responder protocol, the offline model runner (run_offline; feeds each turn its frame)
- live.py      the live runner: a WebRTC client (audio, and the clip's frames as a camera)
- baselines.py the harness baselines as Responders: 600 ms energy-VAD endpointing, and Silero VAD +
               Smart Turn v3.2 through pipecat's own analyzers (optional `eval` extra)
- calibrate.py the speak gate's (start, keep, voice) sweep on a validation root -> the checkpoint's config
- intelligibility.py ASR of the model's speech vs its own text, and caption WER, on held-out dialogues
- dialogues.py generated dialogues -> FD-bench task clips (and our cue/visual tasks)
- scoring.py   one system's outputs on disk -> per-task summaries
- report.py    report.json + report.md + latency.png
- synth.py     hand-made clips with known answers
- cli.py       add_eval_parser / run_eval
"""
