"""`microturn eval`: Full-Duplex-Bench v1 metrics for the interaction model and a harness baseline.

- layout.py    the FD-bench directory layout (clips, task kinds, reading/writing audio + json)
- vad.py       energy VAD -> speech segments
- words.py     timed words: output.json, and words from the model's own text stream
- metrics.py   the FD-bench formulas (fdbench.md) and TimeSpeak, pure functions
- runner.py    Responder protocol, the offline model runner (run_offline)
- baselines.py the harness baseline (VAD endpointing + fixed-length speech) as a Responder
- scoring.py   one system's outputs on disk -> per-task summaries
- report.py    report.json + report.md + latency.png
- synth.py     hand-made clips with known answers
- cli.py       add_eval_parser / run_eval
"""
