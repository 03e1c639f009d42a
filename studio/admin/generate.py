"""The Generate tab (admin side): text-to-image with any registry model or a local path.

A thin layer over `model_runtime`: the registry fills the model picker (licence shown),
presets fill the prompt, `model_runtime.generation.generate` runs the request with a step
callback and a cancel flag, and `model_runtime.provenance` writes each PNG with its
metadata (AUTOMATIC1111 `parameters` + JSON, `synthetic: true`) — wanted here, unlike the
blinded reader side.

Every finished run is kept as a *batch* folder (`<db dir>/<db stem>.batches/<id>/`: the
PNGs and a `manifest.csv` that `medisyn study create` accepts), so a batch can become a
study ("New study" → "Generation batches", or "Send to study" below).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import functools
import html
import pathlib
import queue
import secrets
import threading
import time

import gradio as gr
import numpy as np

from studio.admin.run_slots import RunSlots


LOCAL_PATH = "__local__"
MAX_IMAGES = 16
MAX_STEPS = 150

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()
# Generations at once in this process; Gradio lets up to GENERATE_ADMITTED requests into
# the handler, where the rest wait for a slot and Cancel reaches them (studio/admin/run_slots.py).
SLOTS = RunSlots(limit=2)
GENERATE_ADMITTED = 8


def batches_root(db_path, batches_dir=None) -> pathlib.Path:
    if batches_dir:
        return pathlib.Path(batches_dir)
    p = pathlib.Path(db_path)
    return p.parent / f"{p.stem}.batches"


def model_choices() -> list[tuple[str, str]]:
    """(label, key) for every registry entry, then 'a local path'."""
    from model_runtime import registry

    out = []
    for e in registry.list_models():
        mark = "" if e.available() else "  (not downloaded)"
        out.append((f"{e.name}{mark}", e.key))
    out.append(("Local diffusers folder…", LOCAL_PATH))
    return out


def model_info(key: str) -> str:
    """Markdown about a registry entry: licence first, then modalities and prompt style."""
    from model_runtime import registry

    if key == LOCAL_PATH:
        return "Give the path of a diffusers folder (with `model_index.json`) on the server."
    e = registry.get(key)
    # Registry text is shown as Markdown, where "<modality>" would vanish as an HTML tag.
    esc = functools.partial(html.escape, quote=False)
    lines = [f"**{esc(e.name)}** — licence: **{esc(e.licence)}**"
             + ("" if e.licence_verified else " *(as reported; verify)*")]
    if e.modalities:
        lines.append(f"Modalities: {esc(', '.join(e.modalities))} — presets of other modalities are "
                     "marked: the model would answer them with one of these")
    if e.prompt_style:
        lines.append(f"Prompts: {esc(e.prompt_style)}")
    if not e.available() and e.lora:
        lines.append(f"⚠️ Not on this machine: needs the base `{esc(e.base or '')}` in the Hugging Face cache "
                     f"and the LoRA adapter in `{esc(str(e.lora_path))}` — nothing is downloaded at run time.")
    elif not e.available():
        where = e.hub_id or e.path
        lines.append(f"⚠️ Not on this machine: put `{where}` in the Hugging Face cache "
                     "(or a local folder) to use it — nothing is downloaded at run time.")
    if e.notes:
        lines.append(esc(e.notes))
    return "  \n".join(lines)


def model_location(key: str, local_path: str | None) -> str:
    from model_runtime import registry

    if key == LOCAL_PATH:
        path = pathlib.Path(str(local_path or "").strip()).expanduser()
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers folder (no model_index.json)")
        return str(path)
    return registry.get(key).location


def model_defaults(location: str | None) -> tuple[int, float]:
    """(steps, guidance) the model folder recommends (`medisyn.json`), else 20 / 7.5."""
    if location:
        try:
            from studio.demo.embedded_model import read_defaults

            if (pathlib.Path(location) / "medisyn.json").is_file():
                d = read_defaults(location)
                return int(d.steps), float(d.guidance_scale)
        except (ImportError, OSError, ValueError, TypeError):
            pass
    return 20, 7.5


def get_model(location: str, loras: tuple[str, ...] = ()):
    """Load once per process (per model and LoRA set); concurrent first requests wait for the same load."""
    from model_runtime.loading import load

    key = (location, tuple(loras)) if loras else location
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load(location, options={"loras": list(loras)} if loras else None)
        return _MODELS[key]


def lora_dirs() -> list[pathlib.Path]:
    """Where the LoRA picker looks: assets/loras and the folders in MEDISYN_LORAS (os.pathsep-separated)."""
    import os

    from model_runtime import registry

    extra = [pathlib.Path(p) for p in os.environ.get("MEDISYN_LORAS", "").split(os.pathsep) if p.strip()]
    return [registry.assets_dir() / "loras", *extra]


def lora_choices(dirs=None) -> list[str]:
    """Local LoRA adapters: .safetensors files and `medisyn model finetune` output folders, two levels deep."""
    from model_runtime.lora import DEFAULT_FILE

    found = []
    for root in dirs if dirs is not None else lora_dirs():
        root = pathlib.Path(root)
        if not root.is_dir():
            continue
        for path in sorted([root, *root.glob("*"), *root.glob("*/*")]):
            if path.is_dir() and (path / DEFAULT_FILE).is_file():
                found.append(str(path))
            elif path.is_file() and path.suffix == ".safetensors" and path.name != DEFAULT_FILE \
                    and path.parent.name != "checkpoints" and not (path.parent / DEFAULT_FILE).exists():
                found.append(str(path))
    return list(dict.fromkeys(found))


def lora_specs(values) -> tuple[str, ...]:
    """The picker's values ("PATH" or "PATH:SCALE"), checked: a bad one is a ValueError naming it."""
    from model_runtime.lora import LoraError, parse_spec

    specs = []
    for value in values or ():
        try:
            spec = parse_spec(value)
            spec.file  # exists and holds one adapter
        except LoraError as exc:
            raise ValueError(f"LoRA: {exc}") from None
        specs.append(f"{spec.path}:{spec.scale:g}")
    return tuple(specs)


MAX_FIELDS = 6  # the most fields any preset has (view, anatomy, finding, ..., sex, age)


NOT_DECLARED = " — not a modality of this model"


def model_modalities(key: str | None, local_path: str | None = None) -> tuple[str, ...]:
    """The modalities the chosen model declares (registry entry, or a local folder's
    medisyn.json); empty when it declares none or the choice is not usable."""
    from model_runtime import modalities

    try:
        if key == LOCAL_PATH:
            return modalities.declared(path=str(local_path or "").strip()) if local_path else ()
        return modalities.declared(key) if key else ()
    except (OSError, ValueError):
        return ()


def preset_choices(declared: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(\"Specialty · label\", key) of every prompt preset; with a model's ``declared``
    modalities, presets of other modalities are marked (the model would answer them with one
    of its own modalities, which the batch manifest would then mislabel)."""
    from model_runtime import modalities, presets

    out = []
    for p in presets.list_presets():
        label = f"{p.specialty.capitalize()} · {p.label}"
        if modalities.supports_preset(p.modality, declared) is False:
            label += NOT_DECLARED
        out.append((label, p.key))
    return out


def preset_fields(key: str) -> list[dict]:
    """The preset's fields: name, label, options, default (for the field pickers)."""
    from model_runtime import presets

    p = presets.get_preset(key)
    return [{"name": f.name, "label": f.label, "options": list(f.options), "default": f.default}
            for f in p.fields]


def preset_prompt(key: str, values: dict | None = None) -> tuple[str, str]:
    """(prompt, modality) of a preset with the given field values (defaults otherwise)."""
    from model_runtime import presets

    p = presets.get_preset(key)
    names = set(p.field_names)
    return p.render(**{k: v for k, v in (values or {}).items() if k in names}), p.modality


def model_own_prompt(key: str | None, local_path: str | None, preset_key: str) -> str | None:
    """The chosen model's own caption for the preset's modality (its medisyn.json `prompts`,
    the captions it was trained on), or None. A small model knows only its captions: the
    pathology preset's default "H&E-stained ... colon tissue" gives the embedded model's
    brown immunohistochemistry texture, its own caption says so."""
    import json

    from model_runtime import modalities, presets, registry

    try:
        if key == LOCAL_PATH:
            folder = pathlib.Path(str(local_path or "").strip()) if local_path else None
        else:
            entry = registry.get(key) if key else None
            folder = entry.local_path if entry is not None and entry.path else None
        if folder is None:
            return None
        data = json.loads((pathlib.Path(folder) / modalities.MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        return None
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, dict):
        return None
    wanted = presets.get_preset(preset_key).modality
    for text in prompts.values():
        if wanted in modalities.mentioned(str(text)):
            return str(text)
    return None


@dataclasses.dataclass
class Batch:
    batch_id: str
    folder: pathlib.Path
    images: list[np.ndarray]
    seeds: list[int]
    files: list[pathlib.Path]
    seconds: float
    prompt_seen: str | None = None  # set when the text encoder read only part of the prompt


def run_generation(location: str, *, prompt: str, negative_prompt: str = "", seed: int = 0,
                   steps: int = 20, guidance: float = 7.5, scheduler: str | None = None,
                   n_images: int = 1, width: int | None = None, height: int | None = None,
                   modality: str = "", out_root, on_step=None, cancel: threading.Event | None = None,
                   loras=()) -> Batch:
    """Generate `n_images` (seeds seed, seed+1, ...), write them with provenance to a new
    batch folder in the CLI batch job's layout (`model_runtime.batch_job.write_batch`:
    images/r00000_000.png..., manifest.csv, generation.csv; row 0 of a job with this seed)
    and return the batch."""
    from model_runtime import batch_job
    from model_runtime.generation import GenerationRequest, generate

    if not str(prompt or "").strip():
        raise ValueError("write a prompt (or pick a preset)")
    n_images = int(n_images)
    steps = int(steps)
    if not 1 <= n_images <= MAX_IMAGES:
        raise ValueError(f"number of images must be 1–{MAX_IMAGES}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1–{MAX_STEPS}")
    loaded = get_model(location, lora_specs(loras))
    request = GenerationRequest(prompt=prompt.strip(), negative_prompt=negative_prompt or "",
                                num_images=n_images, seed=int(seed), steps=steps,
                                guidance_scale=float(guidance), scheduler=scheduler or None,
                                width=width, height=height)
    t0 = time.perf_counter()
    results = generate(loaded, request, on_step=on_step, cancel=cancel)
    seconds = time.perf_counter() - t0
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    batch_id = f"{stamp}-{secrets.token_hex(3)}"
    folder = pathlib.Path(out_root) / batch_id
    folder.mkdir(parents=True, exist_ok=True)
    tasks = batch_job.plan_tasks([batch_job.PromptRow(
        row=0, where="Generate tab", prompt=prompt.strip(), modality=modality,
        negative_prompt=negative_prompt or "", n=n_images)], seed=int(seed))
    images, seeds, pngs = [], [], []
    for item, task in zip(results, tasks):
        if item.seed != task.seed:  # the job's seed rule and the request's must agree
            raise RuntimeError(f"image {item.index} has seed {item.seed}, expected {task.seed}")
        # The admin's download keeps the provenance chunks (A1111 `parameters` + JSON).
        tmp = folder / f".{item.index:03d}.png"
        item.save_png(tmp)
        pngs.append(tmp.read_bytes())
        tmp.unlink()
        images.append(np.asarray(item.image.convert("RGB")))
        seeds.append(item.seed)
    batch_job.write_batch(folder, _job_spec(loaded, request, results), tasks, pngs)
    files = [folder / t.rel_path for t in tasks]
    return Batch(batch_id, folder, images, seeds, files, seconds,
                 prompt_seen=results[0].prompt_seen if results else None)


def _job_spec(loaded, request, results):
    """The batch job's description of this run (generation.csv's columns)."""
    import json

    import torch

    from model_runtime import batch_job, schedulers
    from model_runtime.provenance import generator_label

    width, height = (results[0].image.size if results else (request.width or 0, request.height or 0))
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(loaded.dtype)
    try:
        scheduler = schedulers.canonical_name(request.scheduler, loaded.pipe.scheduler)
    except Exception:  # a name the registry does not know: record it as given
        scheduler = request.scheduler or type(loaded.pipe.scheduler).__name__
    adapters = loaded.loras
    return batch_job.JobSpec(
        model=str(loaded.model_id), model_label=generator_label(loaded.model_id, loaded.entry),
        weights_sha256=loaded.weights_hash, steps=request.steps,
        guidance_scale=request.guidance_scale, scheduler=scheduler, width=int(width),
        height=int(height), extra_json="{}", device=str(loaded.device), dtype=dtype,
        options_json="{}", threads=torch.get_num_threads(), loras_json=json.dumps(adapters))


RANDOM_SEED = -1  # the seed field's "a new random seed each run"


def resolve_seed(value) -> int:
    """The seed a run uses: the one given, or a fresh random one for RANDOM_SEED (or none)."""
    if value is None or value == "" or int(value) < 0:
        return secrets.randbelow(2**31)
    return int(value)


def time_left(first: tuple[int, float], step: int, total: int, now: float) -> str:
    """" — about 12 s left" from the pace since the first step seen ("" before a pace)."""
    step0, t0 = first
    if step <= step0 or now <= t0:
        return ""
    left = (now - t0) / (step - step0) * (total - step)
    return f" — about {left:.0f} s left"


def batch_seed(batch_folder) -> int | None:
    """The base seed of a batch (its first image's seed in generation.csv)."""
    if not batch_folder:
        return None
    details = pathlib.Path(batch_folder) / "generation.csv"
    if not details.is_file():
        return None
    with details.open(newline="", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh), None)
    return int(first["seed"]) - int(first.get("k") or 0) if first else None


def batch_zip(batch_folder) -> pathlib.Path:
    """One zip of a batch (images, manifest.csv, generation.csv) for download-all."""
    import zipfile

    folder = pathlib.Path(batch_folder)
    out = folder / f"{folder.name}.zip"
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # PNGs do not compress
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix != ".tmp" and path != out:
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    tmp.replace(out)
    return out


def batch_choices(db_path, batches_dir=None) -> list[tuple[str, str]]:
    """(label, folder) of the saved generation batches, newest first."""
    root = batches_root(db_path, batches_dir)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir(), reverse=True):
        man = d / "manifest.csv"
        if not man.is_file():
            continue
        with man.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        prompt = rows[0]["prompt"] if rows else ""
        out.append((f"{d.name}: {len(rows)} × “{prompt[:50]}”", str(d)))
    return out


def send_to_study(db_path, batch_folder, study: str, *, actor="admin"):
    """Add a batch's images to an existing (draft) study as synthetic cases."""
    from studies.ingest import add_cases

    return add_cases(db_path, study, manifest=pathlib.Path(batch_folder) / "manifest.csv",
                     actor=actor)


# ------------------------------------------------------------------------------- Gradio
class GenerateTab:
    def __init__(self, wire):
        self.wire = wire


def build_generate_tab(db_path, guard, *, model=None, batches_dir=None) -> GenerateTab:
    """Build the tab's components inside the current Blocks context; `wire(study_dd)`
    connects "send to study" to the admin's study picker."""
    out_root = batches_root(db_path, batches_dir)
    choices = model_choices()
    default_key = _default_key(model, choices)
    try:
        default_steps, default_guidance = model_defaults(model_location(default_key, model))
    except (ValueError, KeyError):
        default_steps, default_guidance = model_defaults(None)
    with gr.Row():
        with gr.Column(scale=2):
            model_dd = gr.Dropdown(choices, value=default_key, label="Model",
                                   elem_id="gen-model")
            local_path = gr.Textbox(label="Local diffusers folder", value=model if
                                    default_key == LOCAL_PATH else "",
                                    visible=default_key == LOCAL_PATH)
            info = gr.Markdown(model_info(default_key), elem_id="gen-model-info")
            preset_dd = gr.Dropdown(preset_choices(model_modalities(default_key, model)), value=None,
                                    label="Preset (modality / specialty; fills the prompt)",
                                    elem_id="gen-preset")
            with gr.Row():
                fields = [gr.Dropdown([], value=None, label=f"field {i + 1}", visible=False,
                                      allow_custom_value=True, min_width=120)
                          for i in range(MAX_FIELDS)]
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            # Generate and its status sit under the prompt, where the eye is.
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                stop = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
            status = gr.Markdown(elem_id="gen-status")
            with gr.Row():
                seed = gr.Number(label=f"Seed ({RANDOM_SEED}: a new random one each run; the "
                                 "seed used is shown)", value=RANDOM_SEED, precision=0,
                                 elem_id="gen-seed", min_width=200)
                dice = gr.Button("Random seed", scale=0, min_width=110, elem_id="gen-dice")
                n_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images",
                                     min_width=200)
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=default_steps, step=1, label="Steps",
                                  min_width=200)
                guidance = gr.Slider(0.0, 20.0, value=default_guidance, step=0.5,
                                     label="Guidance", min_width=200)
                scheduler = gr.Dropdown(_scheduler_names(), value=None, allow_custom_value=True,
                                        label="Scheduler (blank: the model's own)")
            lora_dd = gr.Dropdown(lora_choices(), value=[], multiselect=True, allow_custom_value=True,
                                  label="LoRA adapters (PATH or PATH:SCALE; recorded in provenance)",
                                  elem_id="gen-lora")
            modality = gr.Textbox(label="Modality (recorded in the batch manifest)", value="")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images (caption: seed)", columns=4, height="auto",
                                 format="png", elem_id="gen-gallery", buttons=["fullscreen"],
                                 object_fit="contain")
            files = gr.File(label="Downloads: all as one zip, and each PNG with its provenance "
                            "metadata", file_count="multiple", interactive=False,
                            elem_id="gen-files")
            # Batches are listed from disk: a batch made before a new login is still there.
            batch_state = gr.Dropdown(batch_choices(db_path, batches_dir), label="Batch",
                                      elem_id="gen-batch", allow_custom_value=False,
                                      value=(batch_choices(db_path, batches_dir) or [(None, None)])[0][1])
            with gr.Row():
                send_btn = gr.Button("Send batch to the selected study (draft studies only)", elem_id="gen-send")
                reuse_btn = gr.Button("Reuse this batch's seed", elem_id="gen-reuse-seed")
            send_msg = gr.Markdown(elem_id="gen-send-msg")

    def on_model(key, local, request: gr.Request):
        guard(request)
        try:
            st, gd = model_defaults(model_location(key, local))
        except (ValueError, KeyError):
            st, gd = gr.update(), gr.update()
        presets_ = gr.update(choices=preset_choices(model_modalities(key, local)))
        return gr.update(visible=key == LOCAL_PATH), model_info(key), st, gd, presets_

    def on_preset(key, model_key, local, request: gr.Request):
        guard(request)
        if not key:
            return [gr.update(visible=False) for _ in fields] + [gr.update(), gr.update()]
        spec = preset_fields(key)
        updates = []
        for i in range(MAX_FIELDS):
            if i < len(spec):
                f = spec[i]
                opts = f["options"] if f["default"] in f["options"] or not f["default"] \
                    else [f["default"], *f["options"]]
                updates.append(gr.update(choices=opts, value=f["default"] or None,
                                         label=f["label"], visible=True))
            else:
                updates.append(gr.update(choices=[], value=None, visible=False))
        text, modality_ = preset_prompt(key)
        own = model_own_prompt(model_key, local, key)  # what this model was trained on
        return updates + [own or text, modality_]

    def on_field(key, f1, f2, f3, f4, f5, f6, request: gr.Request):
        guard(request)
        values = (f1, f2, f3, f4, f5, f6)
        if not key:
            return gr.update()
        spec = preset_fields(key)
        chosen = {f["name"]: (v or "") for f, v in zip(spec, values)}
        try:
            return preset_prompt(key, chosen)[0]
        except ValueError as exc:  # e.g. an age that is not a number
            raise gr.Error(str(exc)) from None

    def on_dice(request: gr.Request):
        guard(request)
        return secrets.randbelow(2**31)

    def on_reuse(batch_folder, request: gr.Request):
        guard(request)
        seed_ = batch_seed(batch_folder)
        if seed_ is None:
            raise gr.Error("choose a batch first")
        return seed_

    def on_generate(ticket, key, local, prompt_, neg_, seed_, n_, steps_, guidance_, sched_, modality_,
                    loras_, request: gr.Request):
        guard(request)
        session, slots = request.session_hash, SLOTS  # the same pool from start to end
        cancel = slots.begin(session, ticket, "generate")
        if cancel is None:  # Cancel came while the request was on its way: never starts
            yield gr.update(), gr.update(), "Cancelled.", gr.update()
            return
        try:
            yield from _generate(slots, cancel, key, local, prompt_, neg_, seed_, n_, steps_, guidance_,
                                 sched_, modality_, loras_)
        finally:
            slots.end(session, cancel)

    def _generate(slots, cancel, key, local, prompt_, neg_, seed_, n_, steps_, guidance_, sched_, modality_,
                  loras_):
        try:
            location = model_location(key, local)
            loras_ = lora_specs(loras_)
        except (ValueError, KeyError) as exc:
            raise gr.Error(str(exc)) from None
        if not slots.try_slot():
            yield gr.update(), gr.update(), "Waiting for a free generation slot…", gr.update()
            if not slots.wait_slot(cancel):  # cancelled while waiting: nothing started
                yield gr.update(), gr.update(), "Cancelled.", gr.update()
                return
        events: queue.Queue = queue.Queue()
        box: dict = {}
        used_seed = resolve_seed(seed_)

        def on_step(step, total, *_):
            events.put((step, total))

        def work():
            try:
                box["batch"] = run_generation(
                    location, prompt=prompt_, negative_prompt=neg_, seed=used_seed,
                    steps=int(steps_), guidance=float(guidance_), scheduler=sched_ or None,
                    n_images=int(n_), modality=modality_ or "", out_root=out_root,
                    on_step=on_step, cancel=cancel, loras=loras_)
            except BaseException as exc:  # reported below, in the request thread
                box["error"] = exc
            finally:
                slots.free_slot()
                events.put(None)

        threading.Thread(target=work, daemon=True).start()
        yield (gr.update(), gr.update(), "Loading the model…" if (location, loras_) not in _MODELS and location not in _MODELS
               else "Starting…", gr.update())
        try:
            first = None
            while True:
                ev = events.get()
                if ev is None:
                    break
                step, total = ev
                now = time.perf_counter()
                first = first or (step, now)
                yield (gr.update(), gr.update(),
                       f"Step {step} / {total}{time_left(first, step, total, now)} "
                       f"(seed {used_seed})", gr.update())
        finally:
            if "batch" not in box and "error" not in box:
                cancel.set()  # the browser went away: stop the worker too
        if "error" in box:
            exc = box["error"]
            if type(exc).__name__ in ("GenerationCancelled", "Cancelled", "CancelledError"):
                yield gr.update(), gr.update(), "Cancelled.", gr.update()
                return
            raise gr.Error(f"{type(exc).__name__}: {exc}") from None
        b = box["batch"]
        gal = [(img, f"seed {s}") for img, s in zip(b.images, b.seeds)]
        zipped = [str(batch_zip(b.folder))] if pathlib.Path(b.folder).is_dir() else []
        yield (gal, zipped + [str(f) for f in b.files],
               f"{len(b.images)} image(s) in {b.seconds:.1f} s, seed {used_seed} — batch "
               f"`{b.batch_id}`"
               + ("" if b.prompt_seen is None else
                  f"  \n⚠️ The prompt is longer than the model reads: it used only "
                  f"“{html.escape(b.prompt_seen, quote=False)}” (the batch manifest keeps that text)."),
               gr.update(choices=batch_choices(db_path, batches_dir), value=str(b.folder)))

    def on_click(request: gr.Request):
        guard(request)
        return SLOTS.click(request.session_hash, "generate")

    def on_cancel(request: gr.Request):
        """Stop this session's generations: a running one at its next step, one waiting for
        a slot or still on its way at once. With nothing to cancel, the status stays."""
        guard(request)
        return "Cancelled." if SLOTS.cancel(request.session_hash) else gr.update()

    def on_send(batch_folder, study, request: gr.Request):
        guard(request)
        if not batch_folder:
            raise gr.Error("generate a batch first")
        if not study:
            raise gr.Error("choose a study at the top first")
        try:
            added = send_to_study(db_path, batch_folder, study,
                                  actor=f"admin:{request.username}")
        except Exception as exc:  # StudyError and friends: show the message
            raise gr.Error(str(exc)) from None
        return (f"Added {added.n_added} images to **{study}** as synthetic cases "
                f"({added.n_cases} cases now). Leak audit re-run: see the study's page.")

    private = dict(api_visibility="private")
    model_dd.change(on_model, [model_dd, local_path], [local_path, info, steps, guidance, preset_dd],
                    **private)
    preset_dd.change(on_preset, [preset_dd, model_dd, local_path], [*fields, prompt, modality],
                     **private)
    for f in fields:
        f.input(on_field, [preset_dd, *fields], [prompt], **private)
    dice.click(on_dice, None, [seed], **private)
    reuse_btn.click(on_reuse, [batch_state], [seed], **private)
    # The click takes a ticket at once (no queue), so a Cancel before the run starts stops
    # it too. No `cancels=`: Gradio's /cancel makes the page show "Error" (run_slots.py).
    ticket = gr.State(0)
    go.click(on_click, None, [ticket], queue=False, **private).then(
        on_generate, [ticket, model_dd, local_path, prompt, negative, seed, n_images, steps,
                      guidance, scheduler, modality, lora_dd],
        [gallery, files, status, batch_state], concurrency_limit=GENERATE_ADMITTED,
        concurrency_id="generate", **private)
    stop.click(on_cancel, None, [status], queue=False, **private)

    def refresh_batches(current, request: gr.Request):
        guard(request)
        choices = batch_choices(db_path, batches_dir)
        folders = [c[1] for c in choices]
        return gr.update(choices=choices,
                         value=current if current in folders else (folders[0] if folders else None))

    def wire(study_dd):
        send_btn.click(on_send, [batch_state, study_dd], [send_msg], **private)
        study_dd.change(refresh_batches, [batch_state], [batch_state], **private)

    return GenerateTab(wire)


def _default_key(model, choices) -> str:
    keys = [k for _, k in choices]
    if model:
        from model_runtime import registry

        entry = registry.find(str(model))
        if entry is not None:
            return entry.key
        if pathlib.Path(str(model)).is_dir():
            emb = registry.get(registry.EMBEDDED) if registry.EMBEDDED in keys else None
            if emb is not None and emb.local_path and pathlib.Path(str(model)).resolve() == emb.local_path.resolve():
                return emb.key
            return LOCAL_PATH
    return keys[0]


def _scheduler_names() -> list[str]:
    """Samplers whose packages are installed; one a model can't use (e.g. DDIM for a
    flow-matching SD3/Flux checkpoint) is refused at generation with the list it can use."""
    from model_runtime import schedulers

    return [name for name, spec in schedulers.SAMPLERS.items() if spec.available()]
