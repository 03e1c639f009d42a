"""studio.demo.data: the embedded model's training set and the demo study's held-out real images."""
import csv
import hashlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from studio.demo import data as demo_data

from paths import ROOT  # noqa: E402


def test_every_source_file_is_installed():
    for view in demo_data.VIEWS:
        assert demo_data.source_path(view).is_file(), view.key
        assert view.modality in demo_data.MODALITIES
        assert view.split in ("train", "demo")


def test_at_least_five_modalities_in_training_and_demo():
    train = {v.modality for v in demo_data.train_views()}
    demo = {v.modality for v in demo_data.demo_views()}
    assert len(train) >= 5 and demo == train
    # each modality's canonical prompt is one of its training captions
    captions = {(v.modality, v.caption) for v in demo_data.train_views()}
    for m in demo_data.MODALITIES.values():
        assert (m.key, m.prompt) in captions


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_held_out_images_are_never_trained_on():
    """A demo view never shares file + slice/frame + image region with a training view, except
    the views marked not independent (single-image sources), which must say why."""
    for demo in demo_data.demo_views():
        if not demo.independent:
            assert demo.note
            continue
        for train in demo_data.train_views():
            if train.relpath != demo.relpath:
                continue
            shared = [v for v in demo.variants if v in train.variants]
            assert not (shared and _overlap(train.box, demo.box)), (demo.key, train.key, shared)


def test_held_out_lists_are_disjoint():
    assert not set(demo_data._EPI_HELD_OUT) & set(demo_data._EPI_TRAIN)
    assert not set(demo_data._ECHO_HELD_OUT) & set(demo_data._ECHO_TRAIN)
    # no training frame is a direct neighbour of a held-out echo frame
    assert min(demo_data._ECHO_HELD_OUT) - max(demo_data._ECHO_TRAIN) > 1


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    info = demo_data.build_training_set(out, samples=60, seed=3)
    return out, info


def test_training_set_layout(small_set):
    out, info = small_set
    with open(out / "captions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == info.samples == 60
    assert set(rows[0]) >= {"path", "caption", "modality"}
    counts = {m: sum(r["modality"] == m for r in rows) for m in demo_data.MODALITIES}
    assert counts == {m: 10 for m in demo_data.MODALITIES}  # balanced between modalities
    for r in rows[:: 7]:
        im = Image.open(out / r["path"])
        assert im.size == (64, 64) and im.mode == "RGB"
        assert np.asarray(im).std() > 5  # not blank
    assert info.source_images["mri_epi"] == 2 * len(demo_data._EPI_TRAIN)  # slices of both volumes
    assert info.source_images["us_echo"] == len(demo_data._ECHO_TRAIN)


def test_flipped_fundus_changes_laterality(tmp_path):
    demo_data.build_training_set(tmp_path, samples=60, seed=1, modalities=["fundus"])
    with open(tmp_path / "captions.csv", newline="") as fh:
        captions = [r["caption"] for r in csv.DictReader(fh) if r["view"] == "fundus"]
    assert "fundoscopy image of the left retina" in captions
    assert "fundoscopy image of the right retina" in captions


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_training_set_is_deterministic(tmp_path, small_set):
    out, _ = small_set
    demo_data.build_training_set(tmp_path / "again", samples=60, seed=3)
    assert _digest(tmp_path / "again") == _digest(out)
    demo_data.build_training_set(tmp_path / "other", samples=60, seed=4)
    assert _digest(tmp_path / "other") != _digest(out)


def test_demo_set(tmp_path):
    images = demo_data.build_demo_set(tmp_path)
    assert len({im.modality for im in images}) >= 5
    for im in images:
        a = np.asarray(Image.open(im.path))
        assert a.shape == (64, 64, 3) and a.std() > 5
        assert im.prompt and im.origin


def test_data_card_names_every_source_file():
    card = (ROOT / "assets" / "DATA_CARD.md").read_text(encoding="utf-8")
    for view in demo_data.VIEWS:
        assert pathlib.PurePosixPath(view.relpath).name in card, view.relpath
