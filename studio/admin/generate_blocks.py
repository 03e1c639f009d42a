"""The Generate tab's components and events (`build_generate_tab`), over the plain functions
of `studio.admin.generate` (its run slots and `run_generation` are looked up there at each
run, so the pool is one per process)."""
from __future__ import annotations

import html
import pathlib
import queue
import secrets
import threading
import time

import gradio as gr

from model_runtime.defaults import settings_or_runtime_defaults
from studio.admin import generate
from studio.admin.generate import (
    GENERATE_ADMITTED, LOCAL_PATH, MAX_FIELDS, MAX_IMAGES, MAX_STEPS, RANDOM_SEED,
    batch_choices, batch_seed, batch_zip, batches_root, lora_choices, lora_specs,
    model_choices, model_info, model_loaded, model_location,
    model_modalities, model_own_prompt, preset_choices, preset_fields, preset_prompt,
    resolve_seed, send_to_study, time_left,
)


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
        default_steps, default_guidance = settings_or_runtime_defaults(model_location(default_key, model))
    except (ValueError, KeyError):
        default_steps, default_guidance = settings_or_runtime_defaults(None)
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
            st, gd = settings_or_runtime_defaults(model_location(key, local))
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
        session, slots = request.session_hash, generate.SLOTS  # the same pool from start to end
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
                box["batch"] = generate.run_generation(
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
        yield (gr.update(), gr.update(), "Loading the model…" if not model_loaded(location, loras_)
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
        return generate.SLOTS.click(request.session_hash, "generate")

    def on_cancel(request: gr.Request):
        """Stop this session's generations: a running one at its next step, one waiting for
        a slot or still on its way at once. With nothing to cancel, the status stays."""
        guard(request)
        return "Cancelled." if generate.SLOTS.cancel(request.session_hash) else gr.update()

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
