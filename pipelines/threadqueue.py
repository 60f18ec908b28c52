"""One queue over a local run's worker threads, for the stages whose elements cost unevenly.

A local run with N workers is Beam's in-memory worker (one thread) whose costly stages
run as a ``ThreadQueue`` of N threads (``runner.pipeline_options``). Beam's own threads
(``--direct_running_mode=multi_threading``, ``--direct_num_workers=N``) split a
stage's input between them once, before the stage starts, by element (or by
chunk of encoded elements) in the order they arrived, and never rebalance. Where the
elements' costs vary a hundredfold, one thread ends long before the other: coding the
pipeline benchmark with two threads dealt out evenly by size, 16.5 against 21.9 s of
work (`max`: a coder's time follows the image, not its bytes); auditing its archive
deeply, 0.09 against 1.44 s in the worst of four runs (Beam dealt the stems out as they
came from the CoGroupByKey).

``ThreadQueue`` takes the stage's whole input as one list (``gathered``, a
``combiners.ToList``; a local run holds every element in memory anyway) and runs the
stage's DoFn over it in N threads of its own, each taking the next element when it
finishes one, the heaviest first: each thread has its own copy of the DoFn, set up in
it (a codec per thread). Outputs are yielded as each element finishes. Beam's counters
count in the thread that runs a bundle; the threads count into the stage's own (they
take its state tracker, as Beam's worker threads do).

Distributed runners balance work themselves (dynamic work rebalancing), and local
worker processes share no queue: neither takes this step (``local_threads``). A
one-worker local run takes it with one thread where the stage reads ahead from an object
store (below): the queue's gather stages, which every job pays, for reads that overlap.

With ``ahead``, a DoFn that has a ``prefetch(element)`` method gets each element through
it first, in ``ahead`` threads of their own, at most ``ahead`` elements beyond the last
one a thread took (``_Prefetcher``): the migrate stage reads its inputs there, so a
read's round trips to object storage (10-30 ms each on S3) overlap the coding of the
elements before it instead of holding a coding thread idle.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

import apache_beam as beam


def local_threads(options: beam.options.pipeline_options.PipelineOptions, workers: int, local: bool, *,
                  reads_ahead: bool = False) -> int | None:
    """N where a local run has N > 1 worker threads (the stages that cost then run as one
    ``ThreadQueue``): Beam's in-memory worker (``runner.pipeline_options``' choice), or
    Beam's own threads where asked for; None elsewhere (processes, other runners), and
    for one worker unless ``reads_ahead``: then 1, a queue of one thread for its
    ``ahead`` reads (a migrate from an object store, where each read waits on round trips)."""
    if not local or workers < 1 or (workers == 1 and not reads_ahead):
        return None
    mode = options.get_all_options().get("direct_running_mode")
    return workers if mode in ("in_memory", "multi_threading") else None


def gathered(pcoll, label: str, threads: int | None):
    """``pcoll`` as the input of a stage that runs as a ``ThreadQueue`` over ``threads``
    (one list of its elements; none where ``pcoll`` is empty), or as it is where
    ``threads`` is None."""
    return pcoll if threads is None else pcoll | label >> _Gather()


class _Gather(beam.PTransform):
    """Every element of a PCollection in one list: one GroupByKey on a constant key, where
    ``combiners.ToList`` is a CombineGlobally with its default for an empty input, more of
    Beam's stages (a one-file 2-worker migrate, 2026-12-07: 16 stages in 0.55-0.80 s with
    two ToList gathers and three Reshuffles of the listing; 12 in 0.40-0.52 s with three
    of these gathers and no Reshuffles)."""

    def expand(self, pcoll):
        return (pcoll | "Key" >> beam.Map(lambda element: (0, element)) | "Group" >> beam.GroupByKey()
                | "List" >> beam.MapTuple(lambda _, elements: list(elements)))


def queued(fn: beam.DoFn, threads: int | None, weight: Callable[[Any], float] | None = None, *,
           ahead: int = 0) -> beam.DoFn:
    """``fn``, or where ``threads`` is set, ``fn`` run as a ``ThreadQueue`` (its input
    ``gathered``)."""
    return fn if threads is None else ThreadQueue(fn, threads, weight, ahead=ahead)


class ThreadQueue(beam.DoFn):
    """A list of elements -> what ``fn`` gives for each, ``threads`` threads taking them
    from one queue, the heaviest first by ``weight`` (else in the list's order); with
    ``ahead`` and a ``fn.prefetch``, each element through ``fn.prefetch`` first, up to
    ``ahead`` elements ahead (module docstring)."""

    def __init__(self, fn: beam.DoFn, threads: int, weight: Callable[[Any], float] | None = None, *,
                 ahead: int = 0) -> None:
        self.fn = fn
        self.threads = threads
        self.weight = weight
        self.ahead = ahead if hasattr(fn, "prefetch") else 0

    def process(self, elements: list) -> Iterator[Any]:
        from apache_beam.runners.worker import statesampler

        tracker = statesampler.get_current_tracker()  # the stage's counters (None outside a runner)
        local = threading.local()
        made: list[beam.DoFn] = []
        made_lock = threading.Lock()

        def run(element: Any) -> list:
            if prefetched is not None:
                element = prefetched.take(element)  # its index: the element, as prefetch gave it
            fn = getattr(local, "fn", None)
            if fn is None:  # this thread's copy, set up in it
                statesampler.set_current_tracker(tracker)
                fn = copy.deepcopy(self.fn)
                fn.setup()
                local.fn = fn
                with made_lock:
                    made.append(fn)
            return list(fn.process(element))

        if self.weight is not None:
            elements = sorted(elements, key=lambda e: -self.weight(e))
        prefetched = _Prefetcher(elements, self.fn.prefetch, self.ahead) if self.ahead and elements else None
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="medarchive-queue")
        try:
            # submitted in order, so the threads take them in order (what the prefetcher reads ahead)
            pending = {pool.submit(run, i if prefetched is not None else element) for i, element in enumerate(elements)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result()  # an element that fails the stage fails it here
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if prefetched is not None:
                prefetched.close()
            for fn in made:
                fn.teardown()


class _Prefetcher:
    """``fetch(element)`` of each of ``elements``, in ``ahead`` threads, started in order
    and at most ``ahead`` beyond the last element taken (``take``: by index, each once).
    Its threads run nothing else, so every fetch finishes and every ``take`` returns: the
    element it waits for was started when the element ``ahead`` before it was taken, or
    at the start."""

    def __init__(self, elements: list, fetch: Callable[[Any], Any], ahead: int) -> None:
        self.elements, self.fetch, self.ahead = elements, fetch, ahead
        self.pool = ThreadPoolExecutor(ahead, thread_name_prefix="medarchive-fetch")
        self.futures: dict[int, Any] = {}
        self.started = 0
        self.cond = threading.Condition()
        with self.cond:
            self._start_up_to(ahead)

    def _start_up_to(self, end: int) -> None:
        while self.started < min(end, len(self.elements)):
            self.futures[self.started] = self.pool.submit(self.fetch, self.elements[self.started])
            self.started += 1
        self.cond.notify_all()

    def take(self, index: int) -> Any:
        with self.cond:
            self.cond.wait_for(lambda: index in self.futures)
            future = self.futures.pop(index)
        try:
            return future.result()
        finally:
            with self.cond:
                self._start_up_to(index + 1 + self.ahead)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
