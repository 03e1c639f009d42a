"""The generate stage: per generator, `model_runtime.batch_job.run_generate_job` (local or Ray;
it resumes), each generator with its own stamp so an unchanged one is not redone."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil

from model_runtime.defaults import settings_or_runtime_defaults
from studies.imaging.manifest import write_manifest
from studio.experiment.config import ExperimentCancelled, ExperimentError, Generator
from studio.experiment.records import Context, digest_files, read_rows, reference_rows, sha_file, sha_json


def _gen_params(g: Generator) -> dict:
    d = dataclasses.asdict(g)
    if g.prompts != "real":
        d["prompts"] = {"file": g.prompts, "sha256": sha_file(pathlib.Path(g.prompts))}
    d["lora"] = [{"spec": s, "sha256": _lora_hash(s)} for s in g.lora]
    return d


def _lora_hash(spec: str) -> str:
    path = re.sub(r":[0-9.]+$", "", spec)
    p = pathlib.Path(path)
    if p.is_file():
        return sha_file(p)
    return digest_files([f for f in p.rglob("*") if f.is_file()], p)[0] if p.is_dir() else ""


def generate_inputs(ctx: Context) -> dict:
    # The engine is not an input: local and Ray write identical bytes (model_runtime.batch_job).
    return {"split": ctx.outputs("split"), "generators": [_gen_params(g) for g in ctx.cfg.generators]}


def _prompts_for(g: Generator, reference: list[dict], folder: pathlib.Path) -> pathlib.Path:
    if g.prompts != "real":
        return pathlib.Path(g.prompts)
    path = folder / "prompts.csv"
    rows = [{"prompt": r["prompt"], "modality": r["modality"], "n": g.images_per_prompt,
             "case_id": f"{g.name}-r{i:05d}", "group": r["group"]} for i, r in enumerate(reference)]
    if any(not r["prompt"] for r in rows):
        raise ExperimentError(f"generator {g.name!r}: prompts = \"real\" needs a caption (prompt) for every "
                              "reference image in real.manifest")
    return write_manifest(path, rows, columns=("prompt", "modality", "n", "case_id", "group"))


def generate_stage(ctx: Context):
    from model_runtime.batch_job import run_generate_job
    from model_runtime.prompts_file import PromptsFileError
    from model_runtime.devices import DeviceUnavailableError
    from model_runtime.generation import NonFiniteOutputError

    reference = reference_rows(ctx.out)
    files, per_gen = [], {}
    keep = {g.name for g in ctx.cfg.generators}
    root = ctx.dir("generate")
    for old in root.iterdir():  # a generator removed from the config leaves nothing behind
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
    for g in ctx.cfg.generators:
        ctx.check()
        folder = root / g.name
        folder.mkdir(parents=True, exist_ok=True)
        params = _gen_params(g)
        sub_key = sha_json({"params": params, "reference": ctx.outputs("split") if g.prompts == "real" else ""})
        sub = folder / "stamp.json"
        try:
            done = json.loads(sub.read_text(encoding="utf-8")) if sub.is_file() else None
        except ValueError:
            done = None
        if done and done.get("key") == sub_key and (folder / "manifest.csv").is_file():
            ctx.log(f"generate {g.name}: unchanged, skipped")
        else:
            prompts = _prompts_for(g, reference, folder)
            steps, guidance = settings_or_runtime_defaults(g.model)

            def on_image(task, path):
                if ctx.cancel is not None and ctx.cancel.is_set():
                    raise ExperimentCancelled("cancelled")

            try:
                res = run_generate_job(
                    g.model, folder, prompts_csv=prompts, n=g.images_per_prompt, seed=g.seed,
                    steps=g.steps or steps, guidance_scale=g.guidance if g.guidance is not None else guidance,
                    scheduler=g.sampler, width=g.size, height=g.size, batch_size=g.batch_size,
                    engine=ctx.engine, threads=g.threads, options={"loras": g.lora} if g.lora else None,
                    progress=False, warn=lambda m, n=g.name: ctx.log(f"generate {n}: {m}"), on_image=on_image)
            except ExperimentCancelled:
                raise
            except (PromptsFileError, ValueError, LookupError, OSError, DeviceUnavailableError,
                    NonFiniteOutputError) as exc:
                text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError quotes its text
                raise ExperimentError(f"generator {g.name!r}: {text}") from None
            ctx.log(f"generate {g.name}: {res.generated} generated, {res.skipped} already there")
            sub.write_text(json.dumps({"key": sub_key}) + "\n", encoding="utf-8")
        manifest = read_rows(folder / "manifest.csv")
        details = read_rows(folder / "generation.csv")
        files += [folder / "manifest.csv", folder / "generation.csv"] + [folder / r["path"] for r in manifest]
        first = details[0] if details else {}
        per_gen[g.name] = {
            "n": len(manifest), "model": g.model, "model_label": first.get("model", ""),
            "weights_sha256": first.get("weights_sha256", ""), "loras": first.get("loras", ""),
            "lora_sha256": first.get("lora_sha256", ""), "scheduler": first.get("scheduler", ""),
            "steps": first.get("steps", ""), "guidance_scale": first.get("guidance_scale", ""),
            "size": f"{first.get('width', '')}x{first.get('height', '')}", "dtype": first.get("dtype", ""),
            "seeds": _seed_range([int(r["seed"]) for r in details if r.get("seed", "").lstrip("-").isdigit()]),
            "prompts": "the reference real images' own captions, one row per real image (paired by group)"
                       if g.prompts == "real" else f"prompts file {pathlib.Path(g.prompts).name}",
            "images_per_prompt": g.images_per_prompt, "licence": _licence(g),
            "truncated": sum(r.get("prompt_truncated") == "true" for r in details),
        }
    return files, {"generators": per_gen}


def _seed_range(seeds: list[int]) -> str:
    if not seeds:
        return ""
    s = sorted(seeds)
    return (f"one per image: generator seed + 10000 × prompt row + image index ({len(s)} images, "
            f"{s[0]} … {s[-1]})") if len(s) > 1 else str(s[0])


def _licence(g: Generator) -> str:
    if g.licence:
        return g.licence
    try:
        from model_runtime import registry

        entry = registry.find(g.model)
    except Exception:  # noqa: BLE001 - a folder or Hub id outside the registry
        entry = None
    if entry is not None and entry.licence:
        return entry.licence + ("" if entry.licence_verified else " (as reported; not verified)")
    return "not reported"

