"""model_runtime.generation + schedulers: seeds, samplers, progress, cancellation, threads."""
import threading

import numpy as np
import pytest

from model_runtime import schedulers
from model_runtime.generation import GenerationCancelled, GenerationRequest, default_batch_size, generate
from model_runtime.loading import load
from runtime_fixtures import (FAMILY_EXTRA, single_torch_thread, tiny_kandinsky22_dir,  # noqa: F401
                              tiny_sd1_dir, tiny_sd2_dir, tiny_sd3_dir, with_scheduler)

SIZE = dict(width=32, height=32)
# LMS computes sigmas through numpy's deprecated __array__ path
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def sd(tiny_sd1_dir):
    return load(tiny_sd1_dir)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def test_same_request_same_bytes(sd):
    request = GenerationRequest("chest x-ray", seed=42, steps=2, **SIZE)
    assert generate(sd, request)[0].image.tobytes() == generate(sd, request)[0].image.tobytes()


def test_image_k_of_a_request_is_bit_identical_to_a_single_run_with_seed_plus_k(sd):
    """The issue's guarantee, with default arguments: on CPU generate() runs one image per pass."""
    request = GenerationRequest("chest x-ray", num_images=3, seed=100, steps=2, **SIZE)
    default = generate(sd, request)
    assert [r.seed for r in default] == [100, 101, 102] and [r.index for r in default] == [0, 1, 2]
    singles = [generate(sd, GenerationRequest("chest x-ray", seed=100 + k, steps=2, **SIZE))[0] for k in range(3)]
    assert [d.image.tobytes() for d in default] == [s.image.tobytes() for s in singles]
    assert len({r.image.tobytes() for r in default}) == 3
    # batching on CPU is still available: same noise, last float bits differ (<= 1/255)
    batched = generate(sd, request, batch_size=3)
    for b, s in zip(batched, singles):
        assert np.abs(pixels(b) - pixels(s)).max() <= 1


def test_default_batch_size_is_one_on_cpu_and_the_whole_request_on_a_gpu():
    assert default_batch_size("cpu", 8) == 1
    assert default_batch_size("cuda", 8) == 8 and default_batch_size("cuda:1", 3) == 3
    assert default_batch_size("mps", 5) == 5


def test_random_seed_is_recorded_and_reproduces(sd):
    first = generate(sd, GenerationRequest("mri", steps=2, **SIZE))[0]
    assert isinstance(first.seed, int)
    again = generate(sd, GenerationRequest("mri", seed=first.seed, steps=2, **SIZE))[0]
    assert again.image.tobytes() == first.image.tobytes()


def test_prompt_and_negative_prompt_change_the_image(sd):
    base = generate(sd, GenerationRequest("chest x-ray", seed=1, steps=2, **SIZE))[0]
    other = generate(sd, GenerationRequest("fundus photograph", seed=1, steps=2, **SIZE))[0]
    negative = generate(sd, GenerationRequest("chest x-ray", negative_prompt="blurry", seed=1, steps=2, **SIZE))[0]
    assert base.image.tobytes() != other.image.tobytes()
    assert base.image.tobytes() != negative.image.tobytes()
    assert negative.negative_prompt == "blurry"


@pytest.mark.parametrize("name", sorted(schedulers.SAMPLERS))
def test_every_offered_sampler_runs_without_touching_the_shared_scheduler(sd, name):
    from model_runtime.generation import _call_pipeline

    base = sd.pipe.scheduler
    before = (type(base), dict(base.config))
    if name not in sd.schedulers():
        with pytest.raises(schedulers.UnknownSchedulerError, match="needs the"):
            generate(sd, GenerationRequest("ct", seed=0, steps=2, scheduler=name, **SIZE))
        return
    result = generate(sd, GenerationRequest("ct", seed=0, steps=2, scheduler=name, **SIZE))[0]
    assert result.scheduler == name
    # NaN latents decode to a flat black image: require real structure
    assert pixels(result).std() > 5
    spec = schedulers.SAMPLERS[name]
    used = _call_pipeline(sd, name).scheduler
    assert type(used).__name__ == spec.class_name
    assert all(used.config[k] == v for k, v in spec.overrides)
    assert (type(sd.pipe.scheduler), dict(sd.pipe.scheduler.config)) == before and sd.pipe.scheduler is base


def test_samplers_give_different_images(sd):
    images = {name: generate(sd, GenerationRequest("ct", seed=0, steps=3, scheduler=name, **SIZE))[0].image.tobytes()
              for name in sd.schedulers()}
    # at 3 steps ancestral Euler and DDPM coincide (the same ancestral update); all others differ
    assert len(set(images.values())) >= len(images) - 1


def test_prior_pipeline_negative_prompts_keep_per_image_seeds(tiny_kandinsky22_dir):
    """Kandinsky's prior samples the negative prompt's embedding from noise too, so it needs a
    generator per negative prompt as well: image k must still match a solo run with seed + k."""
    kandinsky = load(tiny_kandinsky22_dir, options={"hash_weights": False})
    extra = FAMILY_EXTRA["kandinsky22"]
    batch = generate(kandinsky, GenerationRequest("polyp", negative_prompt="blurry", num_images=2, seed=4,
                                                  extra=extra, **SIZE, steps=2), batch_size=2)
    solo = generate(kandinsky, GenerationRequest("polyp", negative_prompt="blurry", seed=5, extra=extra,
                                                 **SIZE, steps=2))[0]
    assert np.abs(pixels(batch[1]) - pixels(solo)).max() <= 1
    plain = generate(kandinsky, GenerationRequest("polyp", seed=5, extra=extra, **SIZE, steps=2))[0]
    assert plain.image.tobytes() != solo.image.tobytes()


def test_sampler_names_and_configs(tiny_sd2_dir, tiny_sd3_dir):
    sd2 = load(tiny_sd2_dir, options={"hash_weights": False})
    made = schedulers.make_scheduler("dpm++ 2m karras", sd2.pipe.scheduler)
    assert type(made).__name__ == "DPMSolverMultistepScheduler" and made.config.use_karras_sigmas
    assert made.config.prediction_type == "v_prediction"  # carried over from the checkpoint
    assert made is not schedulers.make_scheduler("DPM++ 2M Karras", sd2.pipe.scheduler)
    # the checkpoint's own scheduler is labelled by its class, and the label selects it again
    assert schedulers.canonical_name(None, sd2.pipe.scheduler) == "DDIMScheduler"
    assert schedulers.canonical_name("default", sd2.pipe.scheduler) == "DDIMScheduler"
    own = schedulers.make_scheduler("DDIMScheduler", sd2.pipe.scheduler)
    assert own is not sd2.pipe.scheduler and dict(own.config) == dict(sd2.pipe.scheduler.config)
    with pytest.raises(schedulers.UnknownSchedulerError, match="choose one of"):
        schedulers.make_scheduler("Warp drive", sd2.pipe.scheduler)
    # flow-matching checkpoints only offer flow samplers
    sd3 = load(tiny_sd3_dir, options={"hash_weights": False})
    assert sd3.schedulers() == ["Euler", "Euler a"]
    with pytest.raises(schedulers.UnknownSchedulerError):
        generate(sd3, GenerationRequest("ct", seed=0, steps=2, scheduler="DPM++ 2M", **SIZE))
    a = generate(sd3, GenerationRequest("ct", seed=0, steps=2, scheduler="Euler", **SIZE))[0]
    b = generate(sd3, GenerationRequest("ct", seed=0, steps=2, scheduler="Euler a", **SIZE))[0]
    assert a.image.tobytes() != b.image.tobytes()


def test_a_checkpoint_whose_scheduler_has_no_sampler_name_generates_with_it(tmp_path, tiny_sd1_dir):
    """LCM (or TCD, EDM ...) checkpoints: the default is their own scheduler, unchanged."""
    from diffusers import LCMScheduler

    base = load(tiny_sd1_dir, options={"hash_weights": False}).pipe.scheduler
    lcm = load(with_scheduler(tiny_sd1_dir, tmp_path / "lcm", LCMScheduler.from_config(base.config)),
               options={"hash_weights": False})
    result = generate(lcm, GenerationRequest("ct", seed=0, steps=2, **SIZE))[0]
    assert result.scheduler == "LCMScheduler" and pixels(result).std() > 5
    again = generate(lcm, GenerationRequest("ct", seed=0, steps=2, scheduler=result.scheduler, **SIZE))[0]
    assert again.image.tobytes() == result.image.tobytes()
    with pytest.raises(schedulers.UnknownSchedulerError, match=r"choose one of: LCMScheduler \(the model's own\)"):
        generate(lcm, GenerationRequest("ct", seed=0, steps=2, scheduler="Warp drive", **SIZE))


def test_a_tuned_saved_scheduler_is_not_rebuilt_as_a_named_sampler(tmp_path, tiny_sd1_dir):
    """A saved sde-dpmsolver++ / order-3 DPM-Solver must run as saved, not as "DPM++ 2M"."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from model_runtime.generation import _call_pipeline

    base = load(tiny_sd1_dir, options={"hash_weights": False}).pipe.scheduler
    saved = DPMSolverMultistepScheduler.from_config(base.config, algorithm_type="sde-dpmsolver++", solver_order=3)
    model = load(with_scheduler(tiny_sd1_dir, tmp_path / "sde", saved), options={"hash_weights": False})
    used = _call_pipeline(model, None).scheduler
    assert used is not model.pipe.scheduler and dict(used.config) == dict(model.pipe.scheduler.config)
    assert (used.config.algorithm_type, used.config.solver_order) == ("sde-dpmsolver++", 3)

    result = generate(model, GenerationRequest("ct", seed=7, steps=4, **SIZE))[0]
    assert result.scheduler == "DPMSolverMultistepScheduler"
    # exactly what diffusers itself makes with the checkpoint's scheduler
    direct = model.pipe(prompt=["ct"], num_inference_steps=4, guidance_scale=7.0, height=32, width=32,
                        generator=[torch.Generator("cpu").manual_seed(7)], output_type="pil").images[0]
    assert result.image.tobytes() == direct.tobytes()
    named = generate(model, GenerationRequest("ct", seed=7, steps=4, scheduler="DPM++ 2M", **SIZE))[0]
    assert named.image.tobytes() != result.image.tobytes()


def test_a_worker_thread_does_not_keep_an_unloaded_model_alive(tiny_sd1_dir):
    """Each thread caches tokenizer copies per pipeline; the cache must not pin the weights."""
    import gc
    import weakref

    generated, release = threading.Event(), threading.Event()
    errors = []

    inbox = [load(tiny_sd1_dir, options={"hash_weights": False})]
    pipe_ref, unet_ref = weakref.ref(inbox[0].pipe), weakref.ref(inbox[0].pipe.unet)

    def worker():  # a long-lived worker (thread pool, batcher) that outlives the model
        loaded = inbox.pop()
        try:
            generate(loaded, GenerationRequest("ct", seed=0, steps=1, **SIZE))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        del loaded  # the worker is done with the model; only the runtime's caches could keep it
        generated.set()
        release.wait(60)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert generated.wait(60) and not errors
        gc.collect()
        assert pipe_ref() is None and unet_ref() is None
    finally:
        release.set()
        thread.join()


def test_progress_reports_every_step(sd):
    seen = []
    generate(sd, GenerationRequest("ct", seed=0, steps=4, **SIZE), on_step=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # a second-order sampler runs ~2 model calls per step; progress still ends at steps/steps
    heun = []
    generate(sd, GenerationRequest("ct", seed=0, steps=3, scheduler="Heun", **SIZE),
             on_step=lambda d, t: heun.append((d, t)))
    assert heun[-1] == (3, 3) and all(t == 3 for _, t in heun)
    assert [d for d, _ in heun] == sorted(d for d, _ in heun)
    # progress spans all forward passes when batch_size splits a request
    split = []
    generate(sd, GenerationRequest("ct", num_images=2, seed=0, steps=2, **SIZE), batch_size=1,
             on_step=lambda d, t: split.append((d, t)))
    assert split == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_at_the_next_step(sd):
    cancel = threading.Event()
    steps = []

    def on_step(done, total):
        steps.append(done)
        cancel.set()

    with pytest.raises(GenerationCancelled):
        generate(sd, GenerationRequest("ct", seed=0, steps=10, **SIZE), on_step=on_step, cancel=cancel)
    assert steps == [1]
    # the model is still usable afterwards
    assert generate(sd, GenerationRequest("ct", seed=0, steps=2, **SIZE))[0].image.size == (32, 32)


def test_concurrent_calls_with_different_samplers_match_serial_runs(sd):
    """diffusers #1606/#5749: a shared scheduler breaks under threads; ours are per call."""
    requests = [GenerationRequest(f"prompt {i}", negative_prompt="blurry" * (i % 2), seed=i, steps=3,
                                  scheduler=name, **SIZE)
                for i, name in enumerate(["DDIM", "Euler a", "DPM++ 2M", "UniPC", "PNDM", "Heun", "LMS", "DEIS"])]
    serial = [generate(sd, r)[0].image.tobytes() for r in requests]
    results: dict[int, bytes] = {}
    errors = []
    barrier = threading.Barrier(len(requests))

    def work(i):
        try:
            barrier.wait()
            for _ in range(2):
                results[i] = generate(sd, requests[i])[0].image.tobytes()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(len(requests))] == serial


def test_each_thread_tokenizes_with_its_own_tokenizer(sd):
    """Fast tokenizers keep padding settings on a shared object: one thread padding to
    max_length while another pads to "longest" yields 2-token negative prompts (measured:
    ~25 in 6000 calls on one shared tokenizer). Each thread must get a private copy."""
    from model_runtime.generation import _call_pipeline

    bad, seen = [], []

    def hammer(longest: bool):
        view = _call_pipeline(sd, None)
        tok = view.tokenizer
        seen.append(tok)
        assert tok is not sd.pipe.tokenizer and _call_pipeline(sd, None).tokenizer is tok
        assert view.scheduler is not sd.pipe.scheduler and view.unet is sd.pipe.unet
        for _ in range(1500):
            if longest:
                tok(["a chest x-ray"], padding="longest")
            else:
                ids = tok([""], padding="max_length", max_length=77, truncation=True).input_ids[0]
                if len(ids) != 77:
                    bad.append(len(ids))

    threads = [threading.Thread(target=hammer, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(t) for t in seen}) == 4
    assert bad == []


def test_request_validation():
    with pytest.raises(ValueError, match="prompt"):
        GenerationRequest("   ")
    with pytest.raises(ValueError, match="num_images"):
        GenerationRequest("x", num_images=0)
    with pytest.raises(ValueError, match="steps"):
        GenerationRequest("x", steps=0)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        GenerationRequest("x", steps=2.5)
    for bad in (float("nan"), float("inf"), -1.0, "7", True):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
            GenerationRequest("x", guidance_scale=bad)
    assert GenerationRequest("x", steps=20.0, guidance_scale=0).guidance_scale == 0  # 0: no guidance
    with pytest.raises(ValueError, match="extra may not set"):
        GenerationRequest("x", extra={"generator": 1})
    with pytest.raises(ValueError, match="JSON"):
        GenerationRequest("x", extra={"obj": object()})
    assert GenerationRequest("x", seed=5, num_images=3).seeds() == [5, 6, 7]


def test_generated_image_carries_its_parameters(sd):
    result = generate(sd, GenerationRequest("chest x-ray", negative_prompt="noise", seed=9, steps=2,
                                            guidance_scale=5.5, scheduler="Euler", **SIZE))[0]
    assert result.parameters() == {"prompt": "chest x-ray", "negative_prompt": "noise", "seed": 9, "steps": 2,
                                   "guidance_scale": 5.5, "scheduler": "Euler", "width": 32, "height": 32,
                                   "extra": {}}
    assert result.model_id == str(sd.model_id) and result.weights_sha256 == sd.weights_hash
    assert result.device == "cpu" and result.dtype == "fp32"


# --- corrupted weights: NaN/inf never become a black image ----------------------------------

@pytest.mark.parametrize("component", ["unet", "vae"])
def test_non_finite_weights_fail_instead_of_giving_a_black_image(tiny_sd1_dir, component):
    import torch

    from model_runtime.generation import NonFiniteOutputError

    loaded = load(tiny_sd1_dir, options={"hash_weights": False})
    module = loaded.pipe.unet if component == "unet" else loaded.pipe.vae.decoder
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="NaN/infinite values in the "
                       + ("latents after step 1 of 2" if component == "unet" else "decoded image")):
        generate(loaded, GenerationRequest("Axial CT image of the chest", seed=1, steps=2, **SIZE))


def test_the_np_output_path_gives_the_same_pixels_as_diffusers_pil_path(sd):
    import torch

    ours = generate(sd, GenerationRequest("Axial CT image of the chest", seed=4, steps=2, **SIZE))[0]
    # diffusers' own PIL conversion, straight from the pipeline (its scheduler is the checkpoint's)
    theirs = sd.pipe("Axial CT image of the chest", num_inference_steps=2, guidance_scale=7.0, output_type="pil",
                     generator=[torch.Generator("cpu").manual_seed(4)], **SIZE).images[0]
    assert ours.image.tobytes() == theirs.tobytes()


# --- prompts longer than the text encoder reads ----------------------------------------------

# words the tiny CLIP tokenizer keeps whole (one token each), so 75 of them fill its window exactly
LONG = " ".join(["chest image patient normal"] * 30)


def test_the_text_the_model_read_is_recorded_and_gives_the_same_image(sd, caplog):
    import logging

    from model_runtime.generation import prompt_seen

    assert prompt_seen(sd, "Axial CT image of the chest") is None
    with caplog.at_level(logging.WARNING, logger="model_runtime.generation"):
        long = generate(sd, GenerationRequest(LONG, num_images=2, seed=9, steps=2, **SIZE))
    seen = long[0].prompt_seen
    # CLIP keeps 77 tokens: its start and end tokens and the first 75 words here
    assert seen == " ".join(LONG.split()[:75])
    # the model read only that: the image for the cut text is the same, bit for bit
    cut = generate(sd, GenerationRequest(seen, num_images=1, seed=9, steps=2, **SIZE))[0]
    assert cut.image.tobytes() == long[0].image.tobytes() and cut.prompt_seen is None
    # one warning in words per call
    ours = [r for r in caplog.records if "longer than the model's text encoder reads" in r.getMessage()]
    assert len(ours) == 1
    rec = long[0].provenance()
    assert rec["prompt_truncated"] is True and rec["prompt_seen"] == seen and rec["parameters"]["prompt"] == LONG
    assert "prompt_truncated" not in cut.provenance()


def test_a_word_cut_in_the_middle_is_not_shown_as_read(sd):
    from model_runtime.generation import prompt_seen

    # 74 one-token words, then a word the tokenizer splits into single letters: the window
    # ends inside it, so it is left out
    text = " ".join(["chest"] * 74 + ["zyxwv", "normal"])
    assert prompt_seen(sd, text) == " ".join(["chest"] * 74)
    ids = sd.pipe.tokenizer(" ".join(["chest"] * 74), add_special_tokens=False)["input_ids"]
    assert len(ids) == 74


def test_library_noise_is_filtered_from_the_console_handlers():
    import logging

    from model_runtime import quiet

    quiet.install()
    handlers = logging.getLogger("diffusers").handlers + logging.getLogger("transformers").handlers
    assert handlers

    def shown(message):
        record = logging.LogRecord("diffusers.pipelines.x", logging.WARNING, __file__, 1, message, None, None)
        return all(h.filter(record) for h in handlers)

    assert not shown("The following part of your input was truncated because CLIP can only handle sequences up to 77")
    assert not shown("`CLIPImageProcessor` requires torchvision (not installed); falling back to ...")
    assert shown("Some weights of the model checkpoint were not used")  # real warnings still show
