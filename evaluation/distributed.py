"""Feature extraction beyond one machine: the same extractor mapped over a Ray Data dataset.

`extract_features_ray(refs, spec)` splits the image list into chunks, and a pool of Ray actors
(one `evaluation.features` extractor loaded per actor, as `model_runtime.batch_job` loads one
pipeline per actor) decodes, normalises and embeds each chunk where it runs. The result is the
same N x d array, in input order, as `FeatureExtractor.from_normalised` over
`evaluation.images.iter_chunks` gives locally. Image paths must be readable from every node
(a shared file system). `address` joins an existing cluster; without it a local Ray starts and
stops. The arrays then feed `evaluation.fidelity.fid_kid` / `prdc` or the novelty search.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from evaluation.images import ImageRef

__all__ = ["RayFeatureWorker", "extract_features_ray"]


class RayFeatureWorker:
    """Ray Data callable class: loads the extractor once per actor, then embeds chunks."""

    def __init__(self, spec: str, weights: str | None, threads: int):
        import torch

        from evaluation.features import load_extractor

        torch.set_num_threads(threads)
        self.extractor = load_extractor(spec, weights=weights)

    def __call__(self, batch: dict) -> dict:
        from evaluation.images import iter_chunks

        starts, feats = [], []
        for start, chunk_json in zip(batch["start"], batch["refs"]):
            refs = [ImageRef(**{**r, "path": pathlib.Path(r["path"]),
                                "options": tuple(tuple(o) for o in r["options"])})
                    for r in json.loads(chunk_json)]
            _, images = next(iter_chunks(refs, self.extractor.input_size, chunk=len(refs), workers=1))
            starts.append(int(start))
            feats.append(self.extractor.from_normalised(images))
        return {"start": np.array(starts, dtype=np.int64), "features": np.array(feats, dtype=object)}


def extract_features_ray(refs: Sequence[ImageRef], spec: str, *, weights: str | None = None,
                         chunk: int = 64, workers: int | None = None, threads: int = 1,
                         address: str | None = None) -> np.ndarray:
    """N x d features of `refs` computed by a pool of Ray actors (see module docstring)."""
    import ray
    import ray.data

    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=max(2, threads), include_dashboard=False, runtime_env=env, log_to_driver=False)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        items = []
        for s in range(0, len(refs), chunk):
            part = [{**dataclasses.asdict(r), "path": str(r.path)} for r in refs[s:s + chunk]]
            items.append({"start": s, "refs": json.dumps(part)})
        workers = max(1, min(workers, len(items)))
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(RayFeatureWorker, fn_constructor_args=(spec, weights, threads), batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads)
        parts = {int(row["start"]): np.asarray(row["features"]) for row in ds.iter_rows()}
        return np.concatenate([parts[s] for s in sorted(parts)])
    finally:
        if started:
            ray.shutdown()
