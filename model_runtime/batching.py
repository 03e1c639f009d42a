"""Micro-batching: concurrent compatible requests share one batched forward pass.

Several studio users asking for one image each keep a GPU (or the CPU's vector units) far
busier as one batch of N than as N batches of one. :class:`MicroBatcher` runs one worker
thread; a request waits at most ``gather_window`` seconds for company, then every queued
request with the same batching key — same model, size, steps, sampler, guidance, extra
pipeline arguments and negative-prompt presence — is merged, up to ``max_batch_size`` images.
Prompts, negative prompts and seeds may differ: they are per-image lists in the call, and
every image keeps its own CPU generator, so results are split back exactly by position.

Requests with and without a negative prompt are never merged: SDXL and the Kandinsky prior
treat "no negative prompt" differently from an empty one.

Merging is the point of the queue, so it does not keep :func:`generation.generate`'s CPU
guarantee: a merged image starts from the same noise as a solo run with its seed, but on CPU
agrees with it only to within 1/255 per pixel (batch size changes MKL/oneDNN kernel choice).
``max_batch_size=1`` turns merging off and makes every image bit-identical to a solo run; a
request of several images is then also run one image per pass.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from model_runtime import generation
from model_runtime.generation import GeneratedImage, GenerationCancelled, GenerationRequest
from model_runtime.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Job:
    loaded: LoadedModel
    request: GenerationRequest
    shared: generation.Shared
    slots: list[generation.Slot]
    future: concurrent.futures.Future
    on_step: Callable[[int, int], None] | None
    cancel: threading.Event | None
    arrival: float
    active: bool = True

    @property
    def key(self):
        return (id(self.loaded), self.shared)

    def cancelled(self) -> bool:
        return (self.cancel is not None and self.cancel.is_set()) or self.future.cancelled()

    def fail(self, exc: BaseException) -> None:
        self.active = False
        if not self.future.done():
            self.future.set_exception(exc)


class MicroBatcher:
    """Queue + one worker thread that merges compatible requests into batched pipeline calls."""

    def __init__(self, *, max_batch_size: int = 4, gather_window: float = 0.02):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = int(max_batch_size)
        self.gather_window = float(gather_window)
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self.stats = {"batches": 0, "images": 0, "requests": 0, "largest_batch": 0}

    # --- public API --------------------------------------------------------------------
    def submit(self, loaded: LoadedModel, request: GenerationRequest, *,
               on_step: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None) -> concurrent.futures.Future:
        """Queue a request; the future resolves to its list of GeneratedImage (seed order)."""
        request = request.seeded()
        job = _Job(loaded, request, generation.shared_params(loaded, request), generation.slots_of(request),
                   concurrent.futures.Future(), on_step, cancel, time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._pending.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="medisyn-microbatcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return job.future

    def generate(self, loaded: LoadedModel, request: GenerationRequest, *,
                 on_step: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None,
                 timeout: float | None = None) -> list[GeneratedImage]:
        """Blocking submit(); raises what the generation raised (e.g. GenerationCancelled)."""
        return self.submit(loaded, request, on_step=on_step, cancel=cancel).result(timeout=timeout)

    def close(self, *, wait: bool = True) -> None:
        """Stop accepting requests; queued ones still run unless cancelled."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            worker = self._worker
        if wait and worker is not None:
            worker.join()

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- worker ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._execute(batch)
            except BaseException as exc:  # never let the worker die with requests queued
                log.exception("micro-batch failed")
                for job in batch:
                    job.fail(exc)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._pending[0]
            deadline = first.arrival + self.gather_window
            while True:
                room = self.max_batch_size - self._compatible_images(first)
                remaining = deadline - time.monotonic()
                if room <= 0 or remaining <= 0 or self._closed:
                    break
                self._cond.wait(timeout=remaining)
            batch, used = [], 0
            for job in list(self._pending):
                if job.key != first.key:
                    continue
                n = len(job.slots)
                if batch and used + n > self.max_batch_size:
                    continue
                batch.append(job)
                used += n
                self._pending.remove(job)
                if used >= self.max_batch_size:
                    break
            return batch

    def _compatible_images(self, first: _Job) -> int:
        return sum(len(j.slots) for j in self._pending if j.key == first.key)

    def _execute(self, batch: list[_Job]) -> None:
        jobs = []
        for job in batch:
            if job.cancelled() or not job.future.set_running_or_notify_cancel():
                job.fail(GenerationCancelled("cancelled before it started"))
                continue
            jobs.append(job)
        if not jobs:
            return
        loaded, shared = jobs[0].loaded, jobs[0].shared
        slots = [s for job in jobs for s in job.slots]
        size = self.max_batch_size
        chunks = [slots[i:i + size] for i in range(0, len(slots), size)]  # >1 only for one big request

        def should_stop() -> bool:
            for job in jobs:
                if job.active and job.cancelled():
                    job.fail(GenerationCancelled("generation cancelled"))
            return not any(job.active for job in jobs)

        results: list = []
        for c, chunk in enumerate(chunks):
            def on_step(done: int, total: int, c=c) -> None:
                for job in jobs:
                    if job.active and job.on_step is not None:
                        try:
                            job.on_step(c * total + done, total * len(chunks))
                        except Exception as exc:  # one caller's callback must not sink the others
                            job.fail(exc)

            t0 = time.perf_counter()
            try:
                images = generation.run_slots(loaded, shared, chunk, on_step=on_step, should_stop=should_stop)
            except GenerationCancelled:
                return  # every job was cancelled and has already been told
            except Exception as exc:
                for job in jobs:
                    job.fail(exc)
                return
            seconds = time.perf_counter() - t0
            results.extend((slot, image, seconds) for slot, image in zip(chunk, images))
            self._count(len(chunk), jobs if c == 0 else [])

        position = 0
        for job in jobs:
            mine = results[position:position + len(job.slots)]
            position += len(job.slots)
            if not job.active or job.future.done():
                continue
            if job.cancelled():
                job.fail(GenerationCancelled("generation cancelled"))
                continue
            job.future.set_result([
                generation.make_result(loaded, shared, slot, image, index=slot.seed - int(job.request.seed),
                                       seconds=seconds)
                for slot, image, seconds in mine])

    def _count(self, images: int, jobs: list[_Job]) -> None:
        with self._cond:
            self.stats["batches"] += 1
            self.stats["images"] += images
            self.stats["requests"] += len(jobs)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], images)
