"""The Generate tab as plain Python (`studio.admin.generate`): batches with provenance,
input checks, the LoRA picker, and Cancel."""
from __future__ import annotations

import csv

import pathlib

import gradio as gr
import numpy as np
import pytest

from studio_fixtures import make_loud_study, write_loud_manifest

from studies.imaging import stimuli
from studies.storage.connections import stimuli_dir
from studio.admin import view as admin_view
from studio.admin import new_study_tab


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from runtime_fixtures import build_sd

    return str(build_sd(tmp_path_factory.mktemp("tiny") / "sd"))


def test_generation_batch_has_provenance_and_becomes_a_study(tmp_path, tiny_model):
    import threading

    from model_runtime import provenance
    from studio.admin import generate as generate_view

    steps = []
    batch = generate_view.run_generation(
        tiny_model, prompt="Axial CT image of the head", seed=77, steps=3, n_images=2,
        modality="CT", out_root=tmp_path / "batches", on_step=lambda d, t: steps.append((d, t)))
    assert batch.seeds == [77, 78] and len(batch.files) == 2 and steps[-1][0] == steps[-1][1]
    params, rec = provenance.read_png(batch.files[1])
    assert "Seed: 78" in params and rec["synthetic"] is True
    choices = generate_view.batch_choices(tmp_path / "studio.db", tmp_path / "batches")
    assert [c[1] for c in choices] == [str(batch.folder)] and "2 ×" in choices[0][0]
    # the generator column is the same label the CLI batch writes (never a full path)
    with (batch.folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        gens = {r["generator"] for r in csv.DictReader(fh)}
    assert gens == {provenance.generator_label(tiny_model)} and "/" not in gens.pop()
    # Cancelled before it starts: nothing written.
    stop = threading.Event()
    stop.set()
    with pytest.raises(Exception, match="(?i)cancel"):
        generate_view.run_generation(tiny_model, prompt="x", steps=3, n_images=1,
                                     out_root=tmp_path / "batches", cancel=stop)
    assert len(generate_view.batch_choices(tmp_path / "s.db", tmp_path / "batches")) == 1
    # The batch plus real images on the server make a turing study; provenance is stripped.
    real = tmp_path / "real"
    manifest, rows = write_loud_manifest(tmp_path / "src", 4)
    real.mkdir()
    for r in rows:
        if r["source"] == "real":
            dst = real / pathlib.Path(r["path"]).name
            dst.write_bytes((manifest.parent / r["path"]).read_bytes())
            dst.with_name(dst.name.split(".")[0] + ".txt").write_text(r["prompt"])
    db = tmp_path / "studio.db"
    summary = new_study_tab.create_from_batches(
        db, "from-batch", [str(batch.folder)], real_folder=str(real), size=64,
        options=new_study_tab.study_options(["turing", "alignment"]))
    assert (summary.n_real, summary.n_synthetic) == (2, 2)
    for png in stimuli_dir(db).glob("*.png"):
        assert set(stimuli.png_chunk_types(png.read_bytes())) <= {"IHDR", "IDAT", "IEND"}


def test_a_batch_manifest_carries_only_the_text_the_model_read(tmp_path, tiny_model):
    import csv

    from studio.admin import generate as generate_view

    long = " ".join(["chest image patient normal"] * 30)  # 120 one-token words; CLIP reads 75
    batch = generate_view.run_generation(tiny_model, prompt=long, seed=1, steps=1, n_images=1,
                                         out_root=tmp_path / "batches")
    assert batch.prompt_seen == " ".join(long.split()[:75])
    with (batch.folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        assert [r["prompt"] for r in csv.DictReader(fh)] == [batch.prompt_seen]


def test_generation_input_checks(tmp_path, tiny_model):
    from studio.admin import generate as generate_view

    with pytest.raises(ValueError, match="prompt"):
        generate_view.run_generation(tiny_model, prompt="  ", out_root=tmp_path)
    with pytest.raises(ValueError, match="number of images"):
        generate_view.run_generation(tiny_model, prompt="x", n_images=99, out_root=tmp_path)
    with pytest.raises(ValueError, match="not a diffusers folder"):
        generate_view.model_location(generate_view.LOCAL_PATH, str(tmp_path))
    assert generate_view.model_location(generate_view.LOCAL_PATH, tiny_model) == tiny_model
    keys = [k for _, k in generate_view.model_choices()]
    assert keys[0] == "embedded" and keys[-1] == generate_view.LOCAL_PATH
    assert "CC-BY-NC-ND-4.0" in generate_view.model_info("medisyn")
    polyp = generate_view.model_info("prompt-to-polyp-flux")  # a LoRA entry names both missing pieces
    assert "black-forest-labs/FLUX.1-dev" in polyp and "loras/prompt-to-polyp-flux" in polyp and "None" not in polyp
    # "<modality> image of <anatomy>" must survive Markdown (a raw <tag> is swallowed).
    assert "&lt;modality&gt; image of &lt;anatomy&gt;" in generate_view.model_info("embedded")
    prompt, modality = generate_view.preset_prompt("fundus", {"view": "right"})
    assert "right" in prompt and modality == "fundus photograph"

def test_generate_tab_lora_picker_lists_local_adapters_and_records_them(tmp_path, tiny_model, monkeypatch):
    """The picker finds finetune output folders and single .safetensors files; a chosen LoRA is
    applied (different pixels) and recorded as <lora:name:scale> in the PNG's parameters."""
    import shutil

    from model_runtime import finetune as ft
    from model_runtime import provenance
    from studio.admin import generate as generate_view
    from test_finetune import CAPTION, make_data

    data = make_data(tmp_path / "data")
    loras = tmp_path / "loras"
    cfg = ft.FinetuneConfig(steps=3, rank=4, resolution=32, lr=5e-2, checkpoint_every=3, validation_steps=1,
                            batch_size=2)
    run = ft.finetune(tiny_model, data, loras / "retina", cfg, device="cpu", progress=False, log=lambda m: None)
    shutil.copy(run.weights, loras / "copy.safetensors")
    monkeypatch.setenv("MEDISYN_LORAS", str(loras))
    choices = generate_view.lora_choices()
    assert str(loras / "retina") in choices and str(loras / "copy.safetensors") in choices
    assert not any("checkpoints" in c for c in choices)  # training checkpoints are not adapters to pick
    plain = generate_view.run_generation(tiny_model, prompt=CAPTION, seed=5, steps=2, n_images=1,
                                         out_root=tmp_path / "b")
    tuned = generate_view.run_generation(tiny_model, prompt=CAPTION, seed=5, steps=2, n_images=1,
                                         out_root=tmp_path / "b", loras=[f"{loras / 'retina'}:0.8"])
    assert np.abs(plain.images[0].astype(float) - tuned.images[0].astype(float)).mean() > 0.5
    params, rec = provenance.read_png(tuned.files[0])
    assert params.splitlines()[0] == f"{CAPTION} <lora:retina:0.8>" and rec["loras"][0]["scale"] == 0.8
    with pytest.raises(ValueError, match="LoRA"):
        generate_view.run_generation(tiny_model, prompt=CAPTION, steps=2, out_root=tmp_path / "b",
                                     loras=[str(tmp_path / "missing.safetensors")])


class _AdminOnly:
    def is_admin(self, username):
        return username == "admin"


@pytest.fixture
def generate_handlers(tmp_path, monkeypatch):
    """The Generate tab's handlers with one generation slot and a stand-in generation that
    reports step 1, then waits for Cancel (or `finish`) — no model, no timing."""
    import threading
    import types

    from model_runtime.generation import GenerationCancelled
    from studio.admin import generate as generate_view
    from studio.admin.run_slots import RunSlots

    calls, finish = [], threading.Event()

    def fake_generation(location, *, on_step, cancel, out_root, **kw):
        calls.append(kw["prompt"])
        on_step(1, 10)
        while not (cancel.wait(0.01) or finish.is_set()):
            pass
        if cancel.is_set():
            raise GenerationCancelled("cancelled")
        return types.SimpleNamespace(images=[], seeds=[], files=[], seconds=0.1, batch_id="b1",
                                     prompt_seen=None, folder=out_root / "b1")

    monkeypatch.setattr(generate_view, "run_generation", fake_generation)
    monkeypatch.setattr(generate_view, "SLOTS", RunSlots(limit=1))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    db, _, _ = make_loud_study(tmp_path)
    blocks = admin_view.build_admin_blocks(db, _AdminOnly())
    fns = {f.fn.__qualname__.split(".")[0] + "." + f.name: f.fn for f in blocks.fns.values()}

    def h(name):
        return fns[f"build_generate_tab.{name}"]

    def session(name):
        req = types.SimpleNamespace(username="admin", session_hash=name)
        return dict(
            click=lambda: h("on_click")(request=req),
            cancel=lambda: h("on_cancel")(request=req),
            run=lambda ticket, prompt="x": h("on_generate")(
                ticket, generate_view.LOCAL_PATH, str(model), prompt, "", 1, 1, 10, 7.5, None, "", [],
                request=req))

    return types.SimpleNamespace(session=session, calls=calls, finish=finish, blocks=blocks)


def _status(outputs) -> str:
    return outputs[2]


def test_generate_cancel_never_goes_through_gradios_cancel(generate_handlers):
    """Gradio's `cancels=` ends a stopped event with an empty message that the page shows as
    "Error" over "Cancelled." (the flaky test_generate_cancel): no admin event uses it."""
    deps = generate_handlers.blocks.get_config_file()["dependencies"]
    assert deps and not [d for d in deps if d.get("cancels")]


def test_generate_cancel_stops_a_running_generation_which_ends_normally(generate_handlers):
    a = generate_handlers.session("a")
    gen = a["run"](a["click"]())
    assert _status(next(gen)) in ("Loading the model…", "Starting…")
    assert _status(next(gen)).startswith("Step 1 / 10")  # then the time left and the seed
    assert a["cancel"]() == "Cancelled."
    assert [_status(o) for o in gen] == ["Cancelled."]  # the run returns; nothing raised
    assert a["cancel"]() == gr.update()  # nothing left to cancel: the status stays


def test_generate_cancel_drops_a_run_waiting_for_a_slot_at_once(generate_handlers):
    """One slot, held by session a: b's run waits in its handler; b's Cancel ends it at
    once without starting it, and a's run goes on."""
    import threading

    a, b = generate_handlers.session("a"), generate_handlers.session("b")
    run_a = a["run"](a["click"](), "a")
    next(run_a), next(run_a)  # a holds the slot, at step 1
    run_b = b["run"](b["click"](), "b")
    assert _status(next(run_b)) == "Waiting for a free generation slot…"
    rest: list = []
    waiter = threading.Thread(target=lambda: rest.extend(run_b))  # blocks until a slot or Cancel
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not rest
    assert b["cancel"]() == "Cancelled."
    waiter.join(5)
    assert not waiter.is_alive() and [_status(o) for o in rest] == ["Cancelled."]
    assert generate_handlers.calls == ["a"]  # b never started
    generate_handlers.finish.set()  # a finishes normally, untouched by b's Cancel
    assert "image(s) in" in _status(list(run_a)[-1])


def test_generate_cancel_between_click_and_start_drops_that_run_only(generate_handlers):
    a = generate_handlers.session("a")
    ticket = a["click"]()
    assert a["cancel"]() == "Cancelled."  # the request is still on its way
    assert [_status(o) for o in a["run"](ticket)] == ["Cancelled."]
    assert generate_handlers.calls == []
    assert a["cancel"]() == gr.update()
    gen = a["run"](a["click"]())  # the next click runs
    next(gen)
    assert _status(next(gen)).startswith("Step 1 / 10")  # then the time left and the seed
    generate_handlers.finish.set()
    assert "image(s) in" in _status(list(gen)[-1])


def test_generate_clicks_dropped_by_the_browser_are_not_left_to_cancel(generate_handlers):
    """A double click, or a click while this tab's run goes on, is dropped by the browser
    (Gradio's trigger_mode "once"); after the run, an idle Cancel leaves the status alone."""
    a = generate_handlers.session("a")
    a["click"]()  # double click: the page runs one of the two
    gen = a["run"](a["click"]())
    next(gen), next(gen)
    a["click"]()  # during the run: never comes either
    generate_handlers.finish.set()
    assert "image(s) in" in _status(list(gen)[-1])
    assert a["cancel"]() == gr.update()
