"""model_runtime.batching: concurrent compatible requests merge into one forward pass."""
import threading

import numpy as np
import pytest

from model_runtime.batching import MicroBatcher
from model_runtime.generation import GenerationCancelled, GenerationRequest, generate
from model_runtime.loading import load
from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: F401

SIZE = dict(width=32, height=32, steps=2)


@pytest.fixture(scope="module")
def sd(tiny_sd1_dir):
    return load(tiny_sd1_dir)


def close(a, b) -> bool:
    """Same noise, different batch: equal up to the last float bits (at most 1/255)."""
    return np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max() <= 1


def submit_all(batcher, sd, requests, **kw):
    # one long gather window and a full batch: the four requests arrive before it closes
    return [batcher.submit(sd, r, **kw) for r in requests]


def test_compatible_requests_share_one_forward_pass(sd):
    requests = [GenerationRequest(f"prompt {i}", negative_prompt=f"neg {i}", seed=10 * i, **SIZE) for i in range(4)]
    with MicroBatcher(max_batch_size=4, gather_window=2.0) as batcher:
        futures = submit_all(batcher, sd, requests)
        results = [f.result(timeout=60) for f in futures]
    assert batcher.stats["batches"] == 1 and batcher.stats["largest_batch"] == 4
    for request, result in zip(requests, results):
        (image,) = result
        assert (image.prompt, image.negative_prompt, image.seed) == (request.prompt, request.negative_prompt,
                                                                     request.seed)
        assert close(image, generate(sd, request)[0])
    assert len({r[0].image.tobytes() for r in results}) == 4


def test_incompatible_requests_are_not_merged(sd):
    requests = [GenerationRequest("a", seed=1, **SIZE),
                GenerationRequest("b", seed=2, width=32, height=32, steps=3),          # other steps
                GenerationRequest("c", seed=3, scheduler="Euler", **SIZE),              # other sampler
                GenerationRequest("d", seed=4, negative_prompt="blurry", **SIZE),       # negative vs none
                GenerationRequest("e", seed=5, **SIZE)]                                 # merges with "a"
    with MicroBatcher(max_batch_size=8, gather_window=1.0) as batcher:
        results = [f.result(timeout=60) for f in submit_all(batcher, sd, requests)]
    assert batcher.stats["batches"] == 4
    assert [r[0].prompt for r in results] == ["a", "b", "c", "d", "e"]
    assert results[1][0].steps == 3 and results[2][0].scheduler == "Euler"


def test_batch_size_one_is_bit_identical_to_solo_runs(sd):
    requests = [GenerationRequest(f"p{i}", seed=i, **SIZE) for i in range(3)]
    with MicroBatcher(max_batch_size=1, gather_window=0.5) as batcher:
        results = [f.result(timeout=60) for f in submit_all(batcher, sd, requests)]
    assert batcher.stats["batches"] == 3
    assert [r[0].image.tobytes() for r in results] == [generate(sd, q)[0].image.tobytes() for q in requests]
    # merging off: a several-image request runs one image per pass too, exactly like generate() on CPU
    several = GenerationRequest("several", num_images=3, seed=50, **SIZE)
    with MicroBatcher(max_batch_size=1, gather_window=0.0) as batcher:
        queued = batcher.generate(sd, several, timeout=60)
    assert [im.image.tobytes() for im in queued] == [im.image.tobytes() for im in generate(sd, several)]


def test_large_request_is_split_and_keeps_its_seeds(sd):
    request = GenerationRequest("big", num_images=5, seed=70, **SIZE)
    progress = []
    with MicroBatcher(max_batch_size=2, gather_window=0.0) as batcher:
        images = batcher.generate(sd, request, on_step=lambda d, t: progress.append((d, t)), timeout=60)
    assert [im.seed for im in images] == [70, 71, 72, 73, 74] and [im.index for im in images] == list(range(5))
    assert batcher.stats["batches"] == 3
    assert progress[-1] == (6, 6) and [d for d, _ in progress] == list(range(1, 7))


def test_cancelling_one_request_leaves_the_others(sd):
    cancel = threading.Event()
    requests = [GenerationRequest(f"p{i}", seed=i, width=32, height=32, steps=4) for i in range(3)]
    with MicroBatcher(max_batch_size=4, gather_window=2.0) as batcher:
        futures = [batcher.submit(sd, requests[0]),
                   batcher.submit(sd, requests[1], cancel=cancel, on_step=lambda d, t: cancel.set()),
                   batcher.submit(sd, requests[2])]
        with pytest.raises(GenerationCancelled):
            futures[1].result(timeout=60)
        kept = [futures[0].result(timeout=60), futures[2].result(timeout=60)]
    assert batcher.stats["batches"] == 1
    assert close(kept[0][0], generate(sd, requests[0])[0]) and close(kept[1][0], generate(sd, requests[2])[0])


def test_cancelled_before_start_never_runs(sd):
    cancel = threading.Event()
    cancel.set()
    with MicroBatcher(gather_window=0.0) as batcher:
        with pytest.raises(GenerationCancelled):
            batcher.generate(sd, GenerationRequest("x", seed=0, **SIZE), cancel=cancel, timeout=60)
    assert batcher.stats["batches"] == 0


def test_errors_reach_the_caller_and_the_worker_survives(sd):
    with MicroBatcher(gather_window=0.0) as batcher:
        bad = batcher.submit(sd, GenerationRequest("x", seed=0, extra={"no_such_argument": 1}, **SIZE))
        with pytest.raises(ValueError, match="no_such_argument"):
            bad.result(timeout=60)
        assert batcher.generate(sd, GenerationRequest("x", seed=0, **SIZE), timeout=60)[0].image.size == (32, 32)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(sd, GenerationRequest("x", seed=0, **SIZE))


def test_requests_from_many_threads(sd):
    requests = [GenerationRequest(f"thread {i}", seed=i, **SIZE) for i in range(6)]
    out = {}
    with MicroBatcher(max_batch_size=3, gather_window=2.0) as batcher:
        def work(i):
            out[i] = batcher.generate(sd, requests[i], timeout=120)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(out) == list(range(6))
    assert all(out[i][0].prompt == f"thread {i}" and out[i][0].seed == i for i in range(6))
    assert batcher.stats["images"] == 6 and batcher.stats["batches"] <= 4
