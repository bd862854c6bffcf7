"""`microturn eval`: Full-Duplex-Bench v1 metrics for the interaction model and a harness baseline.

- layout.py    the FD-bench directory layout (clips, task kinds, reading/writing audio + json)
- vad.py       energy VAD -> speech segments (the cross-check)
- silero.py    Silero VAD -> speech segments, as FD-bench (optional `eval` extra)
- asr.py       pocketsphinx ASR of output audio -> timed words, as FD-bench (optional `eval` extra)
- words.py     timed words: output.json, and words from the model's own text stream
- metrics.py   the FD-bench formulas (fdbench.md) and TimeSpeak, pure functions
- runner.py    Responder protocol, the offline model runner (run_offline)
- baselines.py the harness baselines as Responders: 600 ms energy-VAD endpointing, and Silero VAD +
               Smart Turn v3.2 through pipecat's own analyzers (optional `eval` extra)
- calibrate.py the speak gate's (start, keep) sweep on a validation root -> the checkpoint's config
- scoring.py   one system's outputs on disk -> per-task summaries
- report.py    report.json + report.md + latency.png
- synth.py     hand-made clips with known answers
- cli.py       add_eval_parser / run_eval
"""
