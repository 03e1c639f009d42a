"""The ``medisyn generate`` job: many prompts -> PNGs + a manifest a reader study ingests as is.

Input: one ``prompt`` (with ``n`` images) or a ``prompts.csv`` with columns

    prompt            required
    modality          optional  (default: the job's --modality)
    negative_prompt   optional  (default: the job's --negative-prompt)
    n                 optional  images for this row (default: the job's --n), 1..10000
    seed              optional  base seed of this row (default: job seed + 10000 * row index)
    case_id, group    optional  passed through to the manifest (case_id gets "_k" when n > 1)

Unknown columns are an error (a typo must not be silently ignored). Image k of data row r
(0-based) gets seed ``row seed + k``, so every image's seed depends only on (row, k): output does
not depend on how the work is sharded.

Output in ``out/``: ``images/r{row:05d}_{k:03d}.png`` (provenance inside, see provenance.py;
with ``dicom=True`` also a DICOM Secondary Capture ``.dcm`` beside each), ``manifest.csv`` with
exactly the study-ingest columns (path, source=synthetic, modality, prompt, generator, case_id,
group) and ``generation.csv`` with every image's parameters and the size actually produced
(pipelines round some sizes: Flux to multiples of 16, Kandinsky up to multiples of 64/8²).

A prompt longer than the text encoder reads (CLIP: 77 tokens) is cut by the pipeline: the job
warns once, ``manifest.csv``'s ``prompt`` is the text the model read (a reader study shows it
next to the image), and ``generation.csv`` has the full ``prompt``, ``prompt_seen`` and
``prompt_truncated``. Rows asking for a modality the model does not declare (see
``model_runtime.modalities``) get one warning per modality before any work.

Work is cut into fixed chunks of ``batch_size`` consecutive images (never mixing rows with and
without a negative prompt), decided before anything runs; each chunk is one pipeline call, on
the local process or on a Ray actor. Because chunks — and hence batch composition — are the
same whatever the engine, shard or resume point, the local and Ray engines write identical
bytes when the thread count per worker is the same (``threads``).

Resumable: every PNG is written atomically and carries a fingerprint of its task; a rerun
skips chunks whose PNGs all exist with the right fingerprint and regenerates the others.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import time
import warnings
from collections.abc import Callable

from model_runtime import defaults, devices, loading, modalities, provenance, quiet
from model_runtime.prompts_file import (
    ROW_SEED_STRIDE,
    ImageTask,
    PromptRow,
    plan_chunks,
    plan_tasks,
    read_prompts_csv,
)
from studies.imaging import manifest as study_manifest

log = logging.getLogger(__name__)

SOURCE = "synthetic"
MANIFEST_COLUMNS = study_manifest.COLUMNS  # the study's header: `medisyn study create` reads the file as is
DETAIL_COLUMNS = ("path", "row", "k", "prompt", "negative_prompt", "seed", "steps", "guidance_scale",
                  "scheduler", "width", "height", "dtype", "model", "weights_sha256", "loras", "lora_sha256",
                  "prompt_truncated", "prompt_seen", "threads")
# LoadOptions that only say where to find the weights (the weights hash covers what was found)
_LOCATION_OPTIONS = ("cache_dir", "revision", "hash_weights")


@dataclasses.dataclass(frozen=True)
class Produced:
    """What a finished image turned out to be (read back from its PNG)."""
    width: int
    height: int
    prompt_seen: str | None   # None: the text encoders read the whole prompt


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs; identical for every chunk of a job."""
    model: str               # what workers load: an absolute folder, a registry key or a Hub id
    model_label: str         # what the manifest's generator column says
    weights_sha256: str
    steps: int
    guidance_scale: float
    scheduler: str           # canonical sampler name
    width: int
    height: int
    extra_json: str
    device: str | None       # resolved by the driver; None: each worker of a remote cluster picks
    dtype: str | None        # "fp32" / "fp16" / "bf16"; None: as device
    options_json: str
    threads: int
    loras_json: str = "[]"   # fused LoRA adapters: [{"name", "scale", "sha256"}], for generation.csv

    def fingerprint(self, task: ImageTask) -> str:
        """What an image depends on: a finished PNG with another fingerprint is regenerated."""
        options = {k: v for k, v in json.loads(self.options_json).items() if k not in _LOCATION_OPTIONS}
        device_kind = self.device.split(":")[0] if self.device else "auto"  # the GPU index changes nothing
        payload = json.dumps([self.weights_sha256, self.steps, self.guidance_scale, self.scheduler,
                              self.width, self.height, self.extra_json, device_kind, self.dtype or "auto",
                              options, task.prompt, task.negative_prompt, task.seed], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclasses.dataclass
class JobResult:
    out: pathlib.Path
    manifest: pathlib.Path
    details: pathlib.Path
    total: int
    generated: int
    skipped: int
    seconds: float
    workers: int = 0         # processes that generated images (Ray actors; 1 for local, 0 if none ran)


# --- the worker side (same code for the local and the Ray engine) -----------------------

def generate_chunk(loaded, spec: JobSpec, chunk: list[ImageTask]) -> list[tuple[ImageTask, bytes]]:
    """Run one chunk as one pipeline call; returns (task, PNG bytes with provenance)."""
    from model_runtime import generation

    shared = generation.Shared(steps=spec.steps, guidance_scale=spec.guidance_scale, scheduler=spec.scheduler,
                               width=spec.width, height=spec.height, extra_json=spec.extra_json,
                               has_negative=bool(chunk[0].negative_prompt.strip()))
    slots = [generation.Slot(t.prompt, t.negative_prompt, t.seed) for t in chunk]
    images = generation.run_slots(loaded, shared, slots)
    out = []
    for task, image in zip(chunk, images):
        result = generation.make_result(loaded, shared, generation.Slot(task.prompt, task.negative_prompt, task.seed),
                                        image, index=task.k)
        rec = provenance.record(result)
        rec["job"] = {"row": task.row, "k": task.k, "fingerprint": spec.fingerprint(task)}
        out.append((task, provenance.png_bytes(image, rec)))
    return out


def _load_for_job(spec: JobSpec):
    import torch

    torch.set_num_threads(spec.threads)
    options = json.loads(spec.options_json) | {"hash_weights": False}
    with quiet.loading_quietly():  # library loading bars would break our per-image bar
        return loading.load(spec.model, device=spec.device, dtype=spec.dtype, options=options)


class RayChunkWorker:
    """Ray Data callable class: loads the pipeline once per actor, then runs chunks."""

    def __init__(self, spec_json: str):
        self.spec = JobSpec(**json.loads(spec_json))
        self.loaded = _load_for_job(self.spec)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import ray

        rows, ks, pngs = [], [], []
        for chunk_json in batch["chunk"]:
            chunk = [ImageTask(**t) for t in json.loads(chunk_json)]
            for task, data in generate_chunk(self.loaded, self.spec, chunk):
                rows.append(task.row)
                ks.append(task.k)
                pngs.append(data)
        actor = ray.get_runtime_context().get_actor_id() or ""  # JobResult.workers counts these
        return {"row": np.array(rows, dtype=np.int64), "k": np.array(ks, dtype=np.int64),
                "png": np.array(pngs, dtype=object), "worker": np.array([actor] * len(rows), dtype=object)}


# --- the driver ------------------------------------------------------------------------

def run_generate_job(model: str, out: str | os.PathLike, *, prompt: str | None = None,
                     prompts_csv: str | os.PathLike | None = None, n: int = 1, seed: int = 0,
                     negative_prompt: str = "", modality: str = "", steps: int = defaults.STEPS,
                     guidance_scale: float = defaults.GUIDANCE, scheduler: str | None = None, width: int | None = None,
                     height: int | None = None, batch_size: int = 1, engine: str = "local",
                     address: str | None = None, device: str | None = None, dtype: str | None = None,
                     threads: int | None = None, workers: int | None = None, extra: dict | None = None,
                     options: dict | None = None, progress: bool = True, dicom: bool = False,
                     warn: Callable[[str], None] | None = None,
                     on_image: Callable[[ImageTask, pathlib.Path], None] | None = None) -> JobResult:
    """Generate every image of the job into ``out`` (resuming a previous run there).

    ``threads``: torch intra-op threads per worker (default: ``devices.default_threads()``,
    physical cores capped and reduced on a busy machine); the Ray engine gives each actor that
    many CPUs. ``workers``: Ray actors (default: one per GPU, else CPUs // threads).
    ``dicom``: also write a DICOM Secondary Capture beside each PNG. ``warn(message)`` receives
    warnings in words (modality not declared by the model, prompt cut by the text encoder;
    default: the ``logging`` warning of this module). ``on_image(task, path)`` is called after
    each PNG is written.
    """
    warn = warn or log.warning
    t0 = time.perf_counter()
    if (prompt is None) == (prompts_csv is None):
        raise ValueError("give exactly one of prompt or prompts_csv")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("prompt is empty")
        if not 1 <= n <= ROW_SEED_STRIDE:
            raise ValueError(f"n must be between 1 and {ROW_SEED_STRIDE}")
        rows = [PromptRow(row=0, where="--prompt", prompt=prompt.strip(), modality=modality,
                          negative_prompt=negative_prompt, n=n)]
    else:
        rows = read_prompts_csv(prompts_csv, default_n=n, default_modality=modality,
                                default_negative=negative_prompt)

    # Resolve everything a worker would otherwise default, so each task is fully specified
    # before any model is loaded (fail fast on an unknown model).
    opts = loading.LoadOptions.coerce(options)
    path, entry = loading.resolve(model, revision=opts.revision, cache_dir=opts.cache_dir)
    # an inpainting/ControlNet folder fails here, not in every worker
    loading.check_supported(loading.config_root(path, opts.config, cache_dir=opts.cache_dir))
    loras = loading.adapters_for(entry, opts)
    adapters = [{"name": a.name, "scale": a.scale, "sha256": provenance.file_sha256(a.file)} for a in loras]
    local = pathlib.Path(str(model)).expanduser()
    # workers resolve the model themselves: an absolute folder, or the key / Hub id (their
    # Hugging Face cache may live elsewhere than the driver's)
    worker_model = str(local.resolve()) if local.exists() else str(model)
    from model_runtime import schedulers
    device, dtype = resolve_device(device, dtype, address=address if engine == "ray" else None,
                                   family=loading.family_of(loading.pipeline_class_name(path, opts.config)))
    default_h, default_w = loading.default_size(path, opts.config)
    spec = JobSpec(
        model=worker_model, model_label=provenance.generator_label(model, entry),
        weights_sha256=provenance.weights_hash(path, extra=[a.file for a in loras]),
        steps=int(steps), guidance_scale=float(guidance_scale),
        scheduler=schedulers.canonical_name(scheduler, loading.saved_scheduler(path, opts.config)),
        width=int(width or default_w), height=int(height or default_h),
        extra_json=json.dumps(extra or {}, sort_keys=True), device=device, dtype=dtype,
        options_json=json.dumps({k: v for k, v in dataclasses.asdict(opts).items()
                                 if v != getattr(loading.LoadOptions(), k)}, sort_keys=True),
        threads=int(threads or devices.default_threads()),
        loras_json=json.dumps(adapters),
    )
    from model_runtime.generation import GenerationRequest
    GenerationRequest(prompt="x", steps=spec.steps, guidance_scale=spec.guidance_scale, width=spec.width,
                      height=spec.height, extra=extra or {})  # validates the shared parameters early

    for message in modality_warnings(rows, modalities.declared(path=path, entry=entry), spec.model_label):
        warn(message)

    out = pathlib.Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(rows, seed=seed)
    chunks = plan_chunks(tasks, batch_size)
    produced: dict[tuple[int, int], Produced] = {}
    for t in tasks:
        info = _finished(out, spec, t)
        if info is not None:
            produced[(t.row, t.k)] = info
            if dicom and not (out / t.dicom_path).is_file():
                _write_dicom(out, t, (out / t.rel_path).read_bytes())
    done = set(produced)
    todo = [c for c in chunks if not all((t.row, t.k) in done for t in c)]
    skipped = sum(len(c) for c in chunks if c not in todo)
    writer = _ManifestWriter(out, spec, tasks, produced)
    warned_truncation = any(p.prompt_seen is not None for p in produced.values())

    from tqdm.auto import tqdm
    bar = tqdm(total=len(tasks), initial=skipped, unit="img", desc="generate", disable=not progress)
    generated = 0
    used_workers = 0

    def accept(task: ImageTask, data: bytes) -> None:
        nonlocal generated, warned_truncation
        target = out / task.rel_path
        info = _produced(data)
        if info.prompt_seen is not None and not warned_truncation:
            warned_truncation = True
            with tqdm.external_write_mode():  # print above the progress bar, not through it
                warn(f"{task_where(rows, task)}: the prompt is longer than the model's text encoder reads; "
                     f"it read only \"{info.prompt_seen}\" and ignored the rest (warned once per job). "
                     "manifest.csv gets the text the model read; generation.csv has both "
                     "(prompt, prompt_seen, prompt_truncated).")
        provenance.atomic_write(target, lambda fh: fh.write(data))
        if dicom:
            _write_dicom(out, task, data)
        writer.add(task, info)
        generated += 1
        bar.update(1)
        if on_image is not None:
            on_image(task, target)

    try:
        if todo:
            if engine == "local":
                _run_local(spec, todo, accept)
                used_workers = 1
            else:
                used_workers = _run_ray(spec, todo, accept, address=address, workers=workers)
    finally:
        bar.close()
        writer.flush(force=True)
    return JobResult(out=out, manifest=writer.manifest, details=writer.details, total=len(tasks),
                     generated=generated, skipped=skipped, seconds=time.perf_counter() - t0,
                     workers=used_workers)


def resolve_device(device: str | None, dtype: str | None, *, address: str | None = None,
                   family: str | None = None) -> tuple[str | None, str | None]:
    """(device, dtype name) the job's workers will use, checked before any work starts.

    Resolved here, not in each worker, so the resume fingerprint and generation.csv say what
    was used. Workers of a cluster joined with ``address`` may have hardware this process
    lacks: there a device is only checked by name, and without one each worker picks its own.
    """
    if address:
        # the default dtype depends on the workers' device (and GPU): without --dtype they pick it
        return (devices.check_device_name(device) if device else None,
                devices.dtype_name(devices.parse_dtype(dtype)) if dtype else None)
    device = devices.pick_device(device)
    return device, devices.dtype_name(devices.pick_dtype(device, dtype, family=family))


def _is_done(out: pathlib.Path, spec: JobSpec, task: ImageTask) -> bool:
    """The PNG exists, is intact (chunk CRCs) and was made for exactly this task."""
    return _finished(out, spec, task) is not None


def _finished(out: pathlib.Path, spec: JobSpec, task: ImageTask) -> Produced | None:
    """What the task's PNG holds, if it exists, is intact and was made for exactly this task."""
    from PIL import Image

    target = out / task.rel_path
    if not target.is_file():
        return None
    try:
        with Image.open(target) as im:
            raw = im.info.get(provenance.PNG_JSON_KEY)  # our chunks precede the image data
            size = im.size
            im.verify()  # reads every chunk and checks its CRC without decoding pixels
        rec = json.loads(raw) if raw else None
    except Exception:  # truncated, corrupt or foreign: regenerate it
        return None
    if not rec or rec.get("job", {}).get("fingerprint") != spec.fingerprint(task):
        return None
    return Produced(width=size[0], height=size[1], prompt_seen=rec.get("prompt_seen"))


def _produced(data: bytes) -> Produced:
    """Size and read prompt of a PNG made by generate_chunk (from its header and JSON chunk)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        raw = im.info.get(provenance.PNG_JSON_KEY)
        size = im.size
    rec = json.loads(raw) if raw else {}
    return Produced(width=size[0], height=size[1], prompt_seen=rec.get("prompt_seen"))


def _write_dicom(out: pathlib.Path, task: ImageTask, data: bytes) -> None:
    """The DICOM Secondary Capture of a finished PNG (same pixels, same provenance record);
    greyscale modalities (CT, MR, DX, NM, OCT ...) as MONOCHROME2."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rec = json.loads(im.info[provenance.PNG_JSON_KEY])
        image = im.convert("RGB")
    code = provenance.dicom_modality(task.modality)
    grey = True if code in provenance.GREYSCALE_DICOM_MODALITIES else None
    provenance.save_dicom(image, out / task.dicom_path, rec=rec, modality=code, grayscale=grey)


def task_where(rows: list[PromptRow], task: ImageTask) -> str:
    """Where a task came from, for messages ("prompts.csv line 3", "--prompt")."""
    return rows[task.row].where if 0 <= task.row < len(rows) else f"row {task.row}"


def modality_warnings(rows: list[PromptRow], declared: tuple[str, ...], model_label: str) -> list[str]:
    """One message per modality the rows ask for (prompt or modality column) and the model
    does not declare; none when the model declares no modalities."""
    asked: dict[str, list[str]] = {}
    for r in rows:
        for name in sorted(modalities.unknown_to(declared, r.prompt, r.modality)):
            asked.setdefault(name, []).append(r.where)
    messages = []
    for name, where in asked.items():
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        messages.append(f"model {model_label!r} does not know {name} images (asked for in {shown}); it was "
                        f"trained on {', '.join(declared)}, so these images will show one of those, "
                        f"not {name}.")
    return messages


def _run_local(spec: JobSpec, chunks: list[list[ImageTask]], accept) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        loaded = _load_for_job(spec)
        for chunk in chunks:
            for task, data in generate_chunk(loaded, spec, chunk):
                accept(task, data)
    finally:
        torch.set_num_threads(before)


def _run_ray(spec: JobSpec, chunks: list[list[ImageTask]], accept, *, address: str | None,
             workers: int | None) -> int:
    """Run the chunks on a pool of Ray actors; returns how many actors ran some."""
    import ray
    import ray.data

    started = False
    env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    if not ray.is_initialized():
        # WARNING level: Ray's INFO lines ("Started a local Ray instance", "execution finished")
        # would interleave with the per-image bar; its warnings and errors still show
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=max(2, spec.threads), include_dashboard=False, runtime_env=env,
                     log_to_driver=False, logging_level=logging.WARNING)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is the per-image bar; Ray's would interleave with it
    ctx.print_on_execution_start = False
    # start once the whole pool has loaded the model (or fail clearly when the cluster cannot
    # host it), so the first actor up does not take chunks meant for the others
    ctx.wait_for_min_actors_s = 900
    try:
        resources = ray.cluster_resources()
        use_gpu = bool(resources.get("GPU")) and (spec.device is None or spec.device.startswith("cuda"))
        if workers is None:
            workers = int(resources.get("GPU", 0)) if use_gpu else max(1, int(resources.get("CPU", 1)) // spec.threads)
        workers = max(1, min(workers, len(chunks)))
        spec_json = json.dumps(dataclasses.asdict(spec))
        by_key = {(t.row, t.k): t for c in chunks for t in c}
        items = [{"chunk": json.dumps([dataclasses.asdict(t) for t in c])} for c in chunks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        map_args = dict(
            fn_constructor_kwargs={"spec_json": spec_json}, batch_size=1,
            # one chunk (seconds of work) per actor at a time: no actor queues chunks while others idle
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_gpus=1 if use_gpu else 0, num_cpus=spec.threads)
        try:
            # No actor restarts: Ray Data keeps the constructor arguments in the object store and,
            # with restarts on, every actor logs a core_worker error line about it. A crashed
            # actor fails the job instead; a rerun resumes from the finished PNGs. max_restarts
            # is only accepted as a deprecated extra remote argument (Ray 2.60).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                ds = ds.map_batches(RayChunkWorker, **map_args, max_restarts=0)
        except TypeError:  # a Ray that no longer takes extra remote arguments
            ds = ds.map_batches(RayChunkWorker, **map_args)
        used = set()
        try:
            for row in ds.iter_rows():
                accept(by_key[(int(row["row"]), int(row["k"]))], bytes(row["png"]))
                used.add(row["worker"])
        except Exception as exc:
            raise _worker_error(exc) from None
        return len(used)
    finally:
        if started:
            ray.shutdown()


def _worker_error(exc: BaseException) -> BaseException:
    """The error a Ray actor raised, unwrapped from Ray's exception chain when it is one the CLI
    reports in one line (non-finite output, a refused pipeline); else ``exc`` unchanged."""
    from model_runtime.generation import NonFiniteOutputError

    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (NonFiniteOutputError, loading.UnsupportedPipelineError)):
            # a Ray-wrapped instance prints the remote traceback; its last line is the message
            last = str(current).strip().splitlines()[-1] if str(current).strip() else ""
            cls = NonFiniteOutputError if isinstance(current, NonFiniteOutputError) \
                else loading.UnsupportedPipelineError
            return cls(last.removeprefix(f"{cls.__name__}: "))
        current = current.__cause__ or current.__context__
    return exc


def write_batch(out: str | os.PathLike, spec: JobSpec, tasks: list[ImageTask],
                pngs: list[bytes]) -> tuple[pathlib.Path, pathlib.Path]:
    """Write finished images (PNG bytes, one per task) and their manifest.csv and
    generation.csv into ``out`` exactly as a job does, so a batch made elsewhere (the
    studio's Generate tab) reads, resumes and becomes a study like a CLI batch. Returns
    (manifest, generation.csv)."""
    out = pathlib.Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    produced = {}
    for task, data in zip(tasks, pngs):
        provenance.atomic_write(out / task.rel_path, lambda fh, data=data: fh.write(data))
        produced[(task.row, task.k)] = _produced(data)
    writer = _ManifestWriter(out, spec, tasks, produced)
    return writer.manifest, writer.details


class _ManifestWriter:
    """Keeps manifest.csv and generation.csv in step with the PNGs on disk (atomic rewrites,
    at most every few seconds, sorted by row and image)."""

    def __init__(self, out: pathlib.Path, spec: JobSpec, tasks: list[ImageTask], produced: dict):
        self.out, self.spec = out, spec
        self.manifest = out / "manifest.csv"
        self.details = out / "generation.csv"
        self.order = {(t.row, t.k): i for i, t in enumerate(tasks)}
        self.tasks = {(t.row, t.k): t for t in tasks}
        self.produced: dict[tuple[int, int], Produced] = dict(produced)
        self.last = 0.0
        self.flush(force=True)

    def add(self, task: ImageTask, info: Produced) -> None:
        self.produced[(task.row, task.k)] = info
        self.flush()

    def flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 2.0:
            return
        self.last = now
        finished = sorted(self.produced, key=self.order.__getitem__)
        spec = self.spec
        manifest_rows = []
        detail_rows = []
        adapters = json.loads(spec.loras_json)
        lora_tags = " ".join(f"<lora:{a['name']}:{a['scale']:g}>" for a in adapters)
        lora_hashes = " ".join(a["sha256"][:12] for a in adapters)
        for key in finished:
            t = self.tasks[key]
            info = self.produced[key]
            # the study shows the manifest prompt beside the image: only text the model read
            seen = t.prompt if info.prompt_seen is None else info.prompt_seen
            manifest_rows.append([t.rel_path, SOURCE, t.modality, seen, spec.model_label, t.case_id, t.group])
            detail_rows.append([t.rel_path, t.row, t.k, t.prompt, t.negative_prompt, t.seed, spec.steps,
                                f"{spec.guidance_scale:g}", spec.scheduler, info.width, info.height,
                                spec.dtype or "auto", spec.model_label, spec.weights_sha256, lora_tags, lora_hashes,
                                "false" if info.prompt_seen is None else "true", seen, spec.threads])
        _write_csv(self.manifest, MANIFEST_COLUMNS, manifest_rows)
        _write_csv(self.details, DETAIL_COLUMNS, detail_rows)


def _write_csv(path: pathlib.Path, header, rows) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    provenance.atomic_write(path, lambda fh: fh.write(data))
