"""Evaluation of synthetic images: how useful they are to downstream models (augment.py, classifier.py)."""
