"""evaluation.distributed: features over Ray Data equal the local extraction (tiny local Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from eval_fixtures import small_set, tiny_torchscript
from evaluation.features import load_extractor
from evaluation.images import iter_chunks, list_images


@pytest.mark.slow
def test_ray_feature_extraction_matches_local(tmp_path):
    pytest.importorskip("ray")
    from evaluation.distributed import extract_features_ray

    refs = list_images(small_set(tmp_path / "imgs", 7, 0))
    net = str(tiny_torchscript(tmp_path / "net.pt"))
    local_ext = load_extractor(net)
    local = np.concatenate([local_ext.from_normalised(c) for _, c in iter_chunks(refs, local_ext.input_size)])
    remote = extract_features_ray(refs, net, chunk=3, workers=1)
    assert remote.shape == local.shape == (7, 16)
    assert np.allclose(remote, local, atol=1e-5)
