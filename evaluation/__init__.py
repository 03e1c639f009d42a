"""Evaluation of synthetic images: memorisation/novelty, fidelity/diversity, prompt alignment.

A library the `medisyn eval` commands and the studio's Evaluate tab wrap. It imports torch and
the image decoding of `studies` (so inputs are read exactly as a study ingests them), never
studio, gradio or sqlite. Modules: `images` (inputs), `features` (local feature extractors),
`novelty`, `fidelity`, `alignment`, `report` (self-contained HTML), `distributed` (Ray Data);
`augment`, `augment_stats` and `classifier` (does synthetic data help a classifier? MediSyn's
experiment); `errors` (`EvaluationError`, the one base of its errors).
"""
