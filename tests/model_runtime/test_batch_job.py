"""model_runtime.batch_job: the `medisyn generate` job (CSV input, manifest, resume, Ray)."""
import csv
import dataclasses
import json
import os

import pytest
import torch

from model_runtime import provenance
from model_runtime.batch_job import MANIFEST_COLUMNS, JobSpec, resolve_device, run_generate_job
from model_runtime.prompts_file import ImageTask, PromptsFileError, plan_chunks, plan_tasks, read_prompts_csv
from model_runtime.devices import DeviceUnavailableError
from model_runtime.generation import GenerationRequest, generate
from model_runtime.loading import ModelNotFoundError, load
from runtime_fixtures import single_torch_thread, tiny_flux_dir, tiny_sd1_dir  # noqa: F401

JOB = dict(steps=2, width=32, height=32, threads=1, progress=False)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def prompts_csv(tmp_path):
    return write(tmp_path / "prompts.csv",
                 "prompt,modality,n,negative_prompt,case_id,group\n"
                 "AP Frontal Chest X-ray (CXR) of a male patient,chest X-ray,3,,cxr,A\n"
                 "\n"
                 "fundoscopy image of the left retina,fundus photograph,2,blurry,,B\n"
                 "Axial CT image of the chest,CT,,,ct-1,\n")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_prompts_csv_is_parsed_with_defaults(prompts_csv):
    rows = read_prompts_csv(prompts_csv, default_n=4, default_negative="text")
    assert [(r.row, r.n, r.negative_prompt, r.case_id) for r in rows] == [
        (0, 3, "text", "cxr"), (1, 2, "blurry", ""), (2, 4, "text", "ct-1")]
    assert rows[2].where == "prompts.csv line 5"  # blank line 3 skipped, numbering kept


@pytest.mark.parametrize("text, message", [
    ("modality\nCT\n", "no 'prompt' column"),
    ("prompt,negative\nx,y\n", "unknown column 'negative'"),
    ("prompt,n\nok,2\nbad,two\n", "line 3, column 'n': 'two' is not a whole number"),
    ("prompt,n\nok,0\n", "line 2, column 'n': 0 is out of range"),
    ("prompt,seed\nok,-1\n", "line 2, column 'seed'"),
    ("prompt,modality\n,CT\n", "line 2, column 'prompt': empty prompt"),
    ("prompt,modality\nx,CT,extra\n", "line 2: expected 2 fields, found 3"),
    ("prompt,prompt\nx,y\n", "appears twice"),
    ("prompt\n", "no prompts"),
    ("", "empty"),
])
def test_malformed_csv_names_the_line(tmp_path, text, message):
    with pytest.raises(PromptsFileError, match=message):
        read_prompts_csv(write(tmp_path / "p.csv", text))


def test_seeds_depend_only_on_row_and_image(prompts_csv):
    rows = read_prompts_csv(prompts_csv)
    tasks = plan_tasks(rows, seed=7)
    assert [(t.row, t.k, t.seed) for t in tasks] == [
        (0, 0, 7), (0, 1, 8), (0, 2, 9), (1, 0, 10_007), (1, 1, 10_008), (2, 0, 20_007)]
    assert [t.case_id for t in tasks] == ["cxr_0", "cxr_1", "cxr_2", "", "", "ct-1"]
    explicit = read_prompts_csv(write(prompts_csv.parent / "s.csv", "prompt,seed,n\na,500,2\nb,,1\n"))
    assert [t.seed for t in plan_tasks(explicit, seed=0)] == [500, 501, 10_000]


def test_chunks_are_fixed_and_never_mix_negative_presence(prompts_csv):
    tasks = plan_tasks(read_prompts_csv(prompts_csv))
    chunks = plan_chunks(tasks, 2)
    assert [[(t.row, t.k) for t in c] for c in chunks] == [[(0, 0), (0, 1)], [(0, 2)], [(1, 0), (1, 1)], [(2, 0)]]
    assert plan_chunks(tasks, 1) == [[t] for t in tasks]


def test_local_job_writes_pngs_and_a_manifest_the_study_ingest_accepts(tmp_path, prompts_csv, tiny_sd1_dir):
    out = tmp_path / "out"
    result = run_generate_job(str(tiny_sd1_dir), out, prompts_csv=prompts_csv, seed=3, batch_size=2, **JOB)
    assert (result.total, result.generated, result.skipped) == (6, 6, 0)
    manifest = read_csv(result.manifest)
    assert list(manifest[0]) == list(MANIFEST_COLUMNS)
    assert [m["path"] for m in manifest] == ["images/r00000_000.png", "images/r00000_001.png",
                                             "images/r00000_002.png", "images/r00001_000.png",
                                             "images/r00001_001.png", "images/r00002_000.png"]
    assert {m["source"] for m in manifest} == {"synthetic"}
    assert manifest[3]["modality"] == "fundus photograph" and manifest[0]["group"] == "A"

    from studies.imaging.manifest import read_manifest
    rows = read_manifest(result.manifest)
    assert [r.source for r in rows] == ["synthetic"] * 6
    assert rows[0].prompt == "AP Frontal Chest X-ray (CXR) of a male patient" and rows[0].case_id == "cxr_0"
    assert rows[3].case_id == "images/r00001_000.png"  # no case_id given: the ingest uses the path

    details = read_csv(result.details)
    assert [int(d["seed"]) for d in details] == [3, 4, 5, 10_003, 10_004, 20_003]
    assert details[3]["negative_prompt"] == "blurry" and details[0]["scheduler"] == "DDIMScheduler"
    assert {d["dtype"] for d in details} == {"fp32"}
    _, rec = provenance.read_png(out / "images/r00001_001.png")
    assert rec["synthetic"] is True and rec["parameters"]["seed"] == 10_004
    assert rec["job"]["row"] == 1 and rec["job"]["k"] == 1
    # batch size 1 would reproduce each image from its seed alone; here row 2 ran alone anyway
    solo = generate(load(tiny_sd1_dir), GenerationRequest("Axial CT image of the chest", seed=20_003, steps=2,
                                                          width=32, height=32))[0]
    from PIL import Image
    with Image.open(out / "images/r00002_000.png") as im:
        assert im.tobytes() == solo.image.tobytes()


class Interrupted(Exception):
    pass


def test_resume_after_interruption_gives_the_same_bytes(tmp_path, prompts_csv, tiny_sd1_dir):
    reference = run_generate_job(str(tiny_sd1_dir), tmp_path / "ref", prompts_csv=prompts_csv, batch_size=2, **JOB)
    out = tmp_path / "out"
    written = []

    def stop_after_three(task, path):
        written.append(path.name)
        if len(written) == 3:
            raise Interrupted()

    with pytest.raises(Interrupted):
        run_generate_job(str(tiny_sd1_dir), out, prompts_csv=prompts_csv, batch_size=2, on_image=stop_after_three,
                         **JOB)
    assert [m["path"] for m in read_csv(out / "manifest.csv")] == [f"images/{n}" for n in written]
    # a half-written file from a crash is detected and regenerated
    damaged = out / "images" / written[0]
    damaged.write_bytes(damaged.read_bytes()[:-30])  # provenance chunk intact, image data cut

    result = run_generate_job(str(tiny_sd1_dir), out, prompts_csv=prompts_csv, batch_size=2, **JOB)
    # chunks are the unit: the first chunk (damaged) and the rest run again; nothing is lost
    assert result.generated + result.skipped == 6 and result.skipped >= 1
    assert [m["path"] for m in read_csv(out / "manifest.csv")] == [m["path"] for m in read_csv(reference.manifest)]
    for name in sorted(os.listdir(tmp_path / "ref" / "images")):
        assert (out / "images" / name).read_bytes() == (tmp_path / "ref" / "images" / name).read_bytes(), name
    assert not [p for p in (out / "images").iterdir() if p.suffix != ".png"]
    again = run_generate_job(str(tiny_sd1_dir), out, prompts_csv=prompts_csv, batch_size=2, **JOB)
    assert (again.generated, again.skipped) == (0, 6)


def test_changed_parameters_are_not_mistaken_for_finished_work(tmp_path, tiny_sd1_dir):
    out = tmp_path / "out"
    run_generate_job(str(tiny_sd1_dir), out, prompt="chest x-ray", n=2, **JOB)
    changed = run_generate_job(str(tiny_sd1_dir), out, prompt="chest x-ray", n=2, **(JOB | {"steps": 3}))
    assert (changed.generated, changed.skipped) == (2, 0)
    assert read_csv(out / "generation.csv")[0]["steps"] == "3"


def test_dtype_and_load_options_are_part_of_what_resume_compares(tmp_path, tiny_sd1_dir):
    out = tmp_path / "out"
    run_generate_job(str(tiny_sd1_dir), out, prompt="chest x-ray", n=2, **JOB)
    # fp32 is what the default resolves to on CPU: nothing to redo
    same = run_generate_job(str(tiny_sd1_dir), out, prompt="chest x-ray", n=2, dtype="float32", **JOB)
    assert (same.generated, same.skipped) == (0, 2)
    bf16 = run_generate_job(str(tiny_sd1_dir), out, prompt="chest x-ray", n=2, dtype="bf16", **JOB)
    assert (bf16.generated, bf16.skipped) == (2, 0)
    assert [d["dtype"] for d in read_csv(out / "generation.csv")] == ["bf16", "bf16"]
    _, rec = provenance.read_png(out / "images/r00000_000.png")
    assert rec["runtime"]["dtype"] == "bf16"
    tiled = run_generate_job(str(tiny_sd1_dir), out, prompt="chest x-ray", n=2, dtype="bf16",
                             options={"vae_tiling": True}, **JOB)
    assert (tiled.generated, tiled.skipped) == (2, 0)


def test_fingerprint_covers_device_dtype_and_options_but_not_where_weights_live():
    spec = JobSpec(model="m", model_label="m", weights_sha256="0" * 64, steps=2, guidance_scale=7.0,
                   scheduler="DDIMScheduler", width=32, height=32, extra_json="{}", device="cpu", dtype="fp32",
                   options_json="{}", threads=1)
    task = ImageTask(row=0, k=0, prompt="p", negative_prompt="", seed=1, modality="", case_id="", group="")
    fp = spec.fingerprint(task)
    changed = [dataclasses.replace(spec, dtype="bf16"), dataclasses.replace(spec, device="cuda"),
               dataclasses.replace(spec, options_json=json.dumps({"lora": "a.safetensors", "lora_scale": 0.5})),
               dataclasses.replace(spec, options_json=json.dumps({"channels_last": True}))]
    assert len({fp} | {c.fingerprint(task) for c in changed}) == 5
    lora = dataclasses.replace(spec, options_json=json.dumps({"lora": "a.safetensors", "lora_scale": 0.5}))
    assert lora.fingerprint(task) != dataclasses.replace(
        lora, options_json=json.dumps({"lora": "a.safetensors", "lora_scale": 0.8})).fingerprint(task)
    # where the weights were found (their hash is in the fingerprint) and which GPU ran them do not count
    elsewhere = dataclasses.replace(spec, options_json=json.dumps({"cache_dir": "/elsewhere", "revision": "main"}))
    assert elsewhere.fingerprint(task) == fp
    assert dataclasses.replace(spec, device="cuda:1").fingerprint(task) == changed[1].fingerprint(task)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_or_bad_dtype_fails_before_any_work(tmp_path, tiny_sd1_dir):
    out = tmp_path / "out"
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        run_generate_job(str(tiny_sd1_dir), out, prompt="x", device="cuda", **JOB)
    with pytest.raises(ValueError, match="unknown dtype"):
        run_generate_job(str(tiny_sd1_dir), out, prompt="x", dtype="int8", **JOB)
    with pytest.raises(ValueError, match="guidance_scale"):
        run_generate_job(str(tiny_sd1_dir), out, prompt="x", **(JOB | {"guidance_scale": float("nan")}))
    assert not out.exists()
    # a remote cluster's workers may have the GPU this machine lacks: only the name is checked there
    assert resolve_device("cuda", None, address="ray://head:10001") == ("cuda", None)
    assert resolve_device(None, "half", address="ray://head:10001") == (None, "fp16")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu", None, address="ray://head:10001")


def test_unknown_model_fails_before_any_work(tmp_path):
    with pytest.raises(ModelNotFoundError):
        run_generate_job(str(tmp_path / "no-model"), tmp_path / "out", prompt="x", **JOB)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="exactly one"):
        run_generate_job("embedded", tmp_path / "out", **JOB)


def test_task_paths_are_neutral():
    task = ImageTask(row=12, k=3, prompt="p", negative_prompt="", seed=1, modality="", case_id="", group="")
    assert task.rel_path == "images/r00012_003.png"


@pytest.mark.slow
def test_ray_engine_writes_the_same_bytes_as_local(tmp_path, prompts_csv, tiny_sd1_dir, capfd):
    """Two actors (the local Ray gets 2 CPUs, one thread each) share the chunks between them:
    the output must not depend on which actor ran which chunk."""
    local = run_generate_job(str(tiny_sd1_dir), tmp_path / "local", prompts_csv=prompts_csv, batch_size=2, **JOB)
    ray_run = run_generate_job(str(tiny_sd1_dir), tmp_path / "ray", prompts_csv=prompts_csv, batch_size=2,
                               engine="ray", workers=2, **JOB)
    assert ray_run.generated == local.generated == 6
    assert (local.workers, ray_run.workers) == (1, 2)  # both actors ran chunks
    names = sorted(os.listdir(tmp_path / "local" / "images"))
    assert names == sorted(os.listdir(tmp_path / "ray" / "images"))
    for name in names:
        assert (tmp_path / "ray" / "images" / name).read_bytes() == (tmp_path / "local" / "images" / name).read_bytes()
    assert (tmp_path / "ray" / "manifest.csv").read_bytes() == (tmp_path / "local" / "manifest.csv").read_bytes()
    # a successful run is quiet: no Ray core_worker error line about actor restarts, no INFO chatter
    err = capfd.readouterr().err
    assert "core_worker" not in err and "Started a local Ray instance" not in err, err[-2000:]


# --- what generation.csv and manifest.csv record ----------------------------------------------

@pytest.fixture(scope="module")
def flux_scale8_dir(tiny_flux_dir, tmp_path_factory):
    """The tiny Flux with a 4-level VAE (8x downsampling, as real Flux): its pipeline rounds
    sizes down to multiples of 16, so 72 px becomes 64."""
    import shutil

    from runtime_fixtures import _tiny_vae

    root = tmp_path_factory.mktemp("flux8") / "pipeline"
    shutil.copytree(tiny_flux_dir, root)
    shutil.rmtree(root / "vae")
    _tiny_vae(latent_channels=1, block_out_channels=(4, 4, 4, 4), use_quant_conv=False, use_post_quant_conv=False,
              shift_factor=0.0609, scaling_factor=1.5035).save_pretrained(str(root / "vae"))
    return root


def test_generation_csv_records_the_size_actually_produced(tmp_path, flux_scale8_dir):
    out = tmp_path / "out"
    result = run_generate_job(str(flux_scale8_dir), out, prompt="chest x-ray", n=1, steps=1, width=72, height=48,
                              threads=1, progress=False)
    details = read_csv(result.details)
    from PIL import Image
    with Image.open(out / details[0]["path"]) as im:
        assert im.size == (64, 48)
    assert (details[0]["width"], details[0]["height"]) == ("64", "48")
    # a resumed job reads the size back from the PNG
    again = run_generate_job(str(flux_scale8_dir), out, prompt="chest x-ray", n=1, steps=1, width=72, height=48,
                             threads=1, progress=False)
    assert again.skipped == 1 and read_csv(again.details)[0]["width"] == "64"


def test_a_truncated_prompt_is_warned_once_and_the_manifest_shows_only_what_was_read(tmp_path, tiny_sd1_dir):
    long = " ".join(["chest image patient normal"] * 30)
    warnings = []
    result = run_generate_job(str(tiny_sd1_dir), tmp_path / "out", prompt=long, n=3, warn=warnings.append, **JOB)
    seen = " ".join(long.split()[:75])
    assert len(warnings) == 1 and "longer than the model's text encoder reads" in warnings[0]
    assert {m["prompt"] for m in read_csv(result.manifest)} == {seen}
    details = read_csv(result.details)
    assert {(d["prompt"], d["prompt_seen"], d["prompt_truncated"]) for d in details} == {(long, seen, "true")}
    short = run_generate_job(str(tiny_sd1_dir), tmp_path / "short", prompt="chest image", warn=warnings.append, **JOB)
    assert len(warnings) == 1
    assert read_csv(short.details)[0]["prompt_truncated"] == "false"
    assert read_csv(short.manifest)[0]["prompt"] == "chest image"


def test_rows_asking_for_a_modality_the_model_does_not_declare_are_warned(tmp_path, tiny_sd1_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_sd1_dir, model)
    (model / "medisyn.json").write_text(json.dumps({"modalities": ["CT", "fundus photograph"]}))
    prompts = write(tmp_path / "p.csv", "prompt,modality\n"
                    "AP Frontal Chest X-ray (CXR) of a male patient,chest X-ray\n"
                    "Axial CT image of the chest,CT\n"
                    "a retina,OCT\n"
                    "PA chest radiograph,\n")
    warnings = []
    run_generate_job(str(model), tmp_path / "out", prompts_csv=prompts, warn=warnings.append, **JOB)
    assert len(warnings) == 2
    cxr = next(w for w in warnings if "chest X-ray" in w)
    assert "p.csv line 2" in cxr and "p.csv line 5" in cxr and "CT, fundus photograph" in cxr
    assert any("OCT" in w and "p.csv line 4" in w for w in warnings)
    # a model that declares nothing is not second-guessed
    warnings.clear()
    run_generate_job(str(tiny_sd1_dir), tmp_path / "out2", prompts_csv=prompts, warn=warnings.append, **JOB)
    assert warnings == []


def test_output_files_follow_the_umask(tmp_path, tiny_sd1_dir):
    import stat

    old = os.umask(0o022)
    try:
        result = run_generate_job(str(tiny_sd1_dir), tmp_path / "out", prompt="chest", dicom=True, **JOB)
    finally:
        os.umask(old)
    files = [result.manifest, result.details, *sorted((tmp_path / "out" / "images").iterdir())]
    assert len(files) == 4 and {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}


def test_default_threads_follow_the_machine(monkeypatch, tmp_path, tiny_sd1_dir):
    from model_runtime import devices

    monkeypatch.delenv("MEDISYN_THREADS", raising=False)
    cores = devices.physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert devices.default_threads(load=0.0) == min(cores, devices.MAX_DEFAULT_THREADS)
    assert devices.default_threads(load=cores + 3.0) == 1  # a busy machine: one thread, not a pile-up
    monkeypatch.setenv("MEDISYN_THREADS", "3")
    assert devices.default_threads(load=50.0) == 3
    job = {k: v for k, v in JOB.items() if k != "threads"}
    result = run_generate_job(str(tiny_sd1_dir), tmp_path / "out", prompt="chest", **job)
    assert read_csv(result.details)[0]["threads"] == "3"


def test_a_workers_non_finite_error_is_unwrapped_from_rays_exception_chain():
    from model_runtime.batch_job import _worker_error
    from model_runtime.generation import NonFiniteOutputError

    try:
        try:
            raise NonFiniteOutputError("the model produced NaN/infinite values in the decoded image")
        except NonFiniteOutputError as inner:
            raise RuntimeError("UserCodeException: MapWorker(MapBatches(RayChunkWorker)) failed") from inner
    except RuntimeError as outer:
        unwrapped = _worker_error(outer)
    assert isinstance(unwrapped, NonFiniteOutputError) and "NaN/infinite" in str(unwrapped)
    other = ValueError("something else")
    assert _worker_error(other) is other
