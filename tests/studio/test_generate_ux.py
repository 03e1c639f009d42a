"""The Generate and Evaluate tabs and the first start, without a browser: a tab batch is a
CLI batch (one writer), seeds are fresh and reusable, a batch downloads as one zip, the
time left is estimated, presets match what the model learnt (nuclear medicine included),
only the chosen source's inputs show, the blank breakdown has a name, and `medisyn studio`
prints its addresses before seeding the demo."""
import csv
import re
import zipfile

import pytest

from model_runtime import batch_job, prompts_file


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from runtime_fixtures import build_sd

    return str(build_sd(tmp_path_factory.mktemp("tiny") / "sd"))


def _rows(path):
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_tab_batch_is_written_by_the_batch_jobs_writer(tmp_path, tiny_model):
    from studio.admin import generate as generate_view

    batch = generate_view.run_generation(tiny_model, prompt="Axial CT image of the head", seed=77,
                                         steps=2, n_images=2, modality="CT",
                                         out_root=tmp_path / "batches")
    rel = [p.relative_to(batch.folder).as_posix() for p in batch.files]
    assert rel == ["images/r00000_000.png", "images/r00000_001.png"]
    manifest = _rows(batch.folder / "manifest.csv")
    details = _rows(batch.folder / "generation.csv")
    assert list(manifest[0]) == list(batch_job.MANIFEST_COLUMNS)
    assert list(details[0]) == list(batch_job.DETAIL_COLUMNS)
    assert [r["path"] for r in manifest] == rel and [r["modality"] for r in manifest] == ["CT"] * 2
    # the job's seed rule (row seed + k; row 0 of a job with this seed)
    planned = prompts_file.plan_tasks([prompts_file.PromptRow(0, "x", "p", n=2)], seed=77)
    assert [int(r["seed"]) for r in details] == [t.seed for t in planned] == batch.seeds
    assert {r["steps"] for r in details} == {"2"} and details[0]["weights_sha256"]
    assert generate_view.batch_seed(batch.folder) == 77
    # one zip holds the whole batch
    with zipfile.ZipFile(generate_view.batch_zip(batch.folder)) as zf:
        names = set(zf.namelist())
    top = batch.folder.name
    assert {f"{top}/{p}" for p in rel + ["manifest.csv", "generation.csv"]} <= names


def test_default_seed_is_fresh_and_the_used_one_is_reusable():
    from studio.admin import generate as generate_view

    seeds = {generate_view.resolve_seed(generate_view.RANDOM_SEED) for _ in range(5)}
    assert len(seeds) == 5 and all(0 <= s < 2**31 for s in seeds)
    assert generate_view.resolve_seed(1234) == 1234 and generate_view.resolve_seed(None) >= 0
    assert generate_view.time_left((1, 10.0), 5, 20, 14.0) == " — about 15 s left"
    assert generate_view.time_left((3, 10.0), 3, 20, 11.0) == ""


def test_presets_match_what_the_embedded_model_learnt():
    from model_runtime import presets
    from studio.admin import generate as generate_view

    nm = presets.get_preset("nuclear-medicine")
    assert nm.modality == "nuclear medicine"
    assert nm.render() == "Whole-body bone scintigraphy, head and chest"
    declared = generate_view.model_modalities("embedded")
    labels = dict((k, lab) for lab, k in generate_view.preset_choices(declared))
    assert not labels["nuclear-medicine"].endswith(generate_view.NOT_DECLARED)
    # the pathology preset fills the embedded model's own caption, not "H&E-stained ..."
    own = generate_view.model_own_prompt("embedded", None, "histology")
    assert own and "immunohistochemistry" in own and "H&E" not in own
    assert generate_view.model_own_prompt("embedded", None, "chest-xray") is None


def test_evaluate_tab_shows_only_the_chosen_sources_inputs_and_names_the_blank_choice():
    from studio.admin import evaluate as ev

    assert ev.source_visibility("Generation batch", "Folder on the server") == \
        (True, False, False, True, False)
    assert ev.source_visibility("Upload a zip", "A study's real images") == \
        (False, False, True, False, True)
    blank = [label for label, value in ev.BREAKDOWN_CHOICES if value == ""]
    assert blank and blank[0].strip()


def test_first_start_prints_the_addresses_before_seeding(tmp_path, monkeypatch):
    from studio.web import app as app_mod
    from studio.demo import study as demo

    said = []

    def fake_seed(db_path, model, *, keep_token, base_url, log):
        said.append("<seeding>")
        raise RuntimeError("no model here")

    monkeypatch.setattr(demo, "seed_demo", fake_seed)
    app_mod.prepare(tmp_path / "studio.db", model="m", port=7999, env={}, echo=said.append)
    first_url = next(i for i, m in enumerate(said) if "http://127.0.0.1:7999/admin/" in m)
    assert first_url < said.index("<seeding>")
    assert re.search(r"http://127\.0\.0\.1:7999/ \(readers", said[first_url])
