"""Evaluation of synthetic images: memorisation/novelty, fidelity/diversity, prompt alignment.

A library the `medisyn eval` commands and the studio's Evaluate tab wrap. It imports torch and
the image decoding of `studies` (so inputs are read exactly as a study ingests them), never
studio, gradio or sqlite. Modules: `images` (inputs), `features` (local feature extractors),
`descriptors` (per-image descriptors and pair measures), `novelty` (the run, its result and
outputs; its public names include those of `novelty_search`: cached descriptors, k-NN and
candidate matching; `novelty_patch`: the partial-copy search; `novelty_calibration`: groups,
held-out thresholds, Wilson intervals, the memorisation test), `fidelity`, `alignment`,
`report` (self-contained HTML), `distributed` (Ray Data); `augment`, `augment_stats` and
`classifier` (does synthetic data help a classifier? MediSyn's experiment); `errors`
(`EvaluationError`, the one base of its errors).
"""
