"""pipelines.threadqueue: a stage's elements coded from one queue by a local run's threads."""

from __future__ import annotations

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from pipelines.runner import pipeline_options
from pipelines.threadqueue import ThreadQueue, gathered, local_threads, queued


class Sleeper(beam.DoFn):
    """(name, seconds) -> name, after sleeping; records which copy (and thread) took it."""

    log: list = []  # shared by the copies: (name, thread, copy, start, end)

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.set_up_in = None
        self.torn_down = False

    def setup(self) -> None:
        self.set_up_in = threading.get_ident()

    def teardown(self) -> None:
        self.torn_down = True

    def process(self, element):
        name, seconds = element
        assert self.set_up_in == threading.get_ident()  # its own copy, set up in this thread
        if name == self.fail:
            raise RuntimeError("the store did not answer")
        start = time.perf_counter()
        time.sleep(seconds)
        Sleeper.log.append((name, threading.get_ident(), id(self), start, time.perf_counter()))
        Metrics.counter("test", "slept").inc()
        yield name


def test_two_threads_take_the_next_element_when_they_finish_one():
    """Elements whose cost does not follow their weight: each runs once, the heaviest
    first, and the two threads finish together (the first element's 0.3 s apart at
    most). Dealt out in advance in a snake draft by weight, one thread got a, d, e, h
    (0.64 s) and the other 0.08 s."""
    Sleeper.log = []
    costs = {"a": 0.30, "b": 0.02, "c": 0.02, "d": 0.02, "e": 0.30, "f": 0.02, "g": 0.02, "h": 0.02}
    weights = {"a": 900, "b": 800, "c": 100, "d": 90, "e": 80, "f": 70, "g": 60, "h": 50}
    queue = ThreadQueue(Sleeper(), 2, weight=lambda element: weights[element[0]])
    assert sorted(queue.process(list(costs.items()))) == sorted(costs)
    log = Sleeper.log
    assert sorted(name for name, *_ in log) == sorted(costs)
    assert {name for name, *_ in sorted(log, key=lambda t: t[3])[:2]} == {"a", "b"}
    ends: dict[int, float] = {}
    for _, thread, _, _, end in log:
        ends[thread] = max(ends.get(thread, 0.0), end)
    assert len(ends) == 2 and len({copy for _, _, copy, _, _ in log}) == 2
    first, second = ends.values()
    assert abs(first - second) < 0.2
    assert max(ends.values()) - min(start for *_, start, _ in log) < 0.55


def test_a_failing_element_fails_the_stage_and_the_rest_are_not_started():
    Sleeper.log = []
    elements = [(f"in{i}", 0.05) for i in range(20)]
    with pytest.raises(RuntimeError, match="did not answer"):
        list(ThreadQueue(Sleeper(fail="in2"), 2).process(elements))
    assert len(Sleeper.log) < 10


class Fetching(beam.DoFn):
    """(name, seconds) elements: ``prefetch`` "reads" each (in the queue's fetch threads),
    ``process`` gives (name, what prefetch gave). Records, in class state shared by the
    queue's copies, the fetches' threads and how many fetched elements waited at most."""

    lock = threading.Lock()
    state: dict = {}

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        Fetching.state = {"fetched": [], "waiting": 0, "most_waiting": 0, "c_read": threading.Event()}

    def prefetch(self, element):
        name, _ = element
        if name == self.fail:
            raise OSError("the store did not answer")
        state = Fetching.state
        with Fetching.lock:
            state["fetched"].append((name, threading.current_thread().name))
            state["waiting"] += 1
            state["most_waiting"] = max(state["most_waiting"], state["waiting"])
        if name == "c":
            state["c_read"].set()
        return name, "read"

    def process(self, element):
        name, read = element
        state = Fetching.state
        with Fetching.lock:
            state["waiting"] -= 1
        if name == "a" and read == "read":  # c, two ahead, is read while a is coded
            assert state["c_read"].wait(5), "c was not read while a was coded"
        yield name, read


def test_a_prefetching_fn_reads_ahead_of_the_threads_that_code():
    """``ahead`` 2 with one coding thread: while a is coded, c (two ahead) is read in a
    fetch thread; every element is read once and given to ``process`` as prefetch made
    it; never more than ``ahead`` read elements wait beyond the one being taken."""
    names = list("abcdefgh")
    out = list(ThreadQueue(Fetching(), 1, ahead=2).process([(n, 0) for n in names]))
    state = Fetching.state
    assert sorted(out) == [(n, "read") for n in names]
    assert sorted(n for n, _ in state["fetched"]) == names  # each once
    assert all(thread.startswith("medarchive-fetch") for _, thread in state["fetched"])
    assert state["most_waiting"] <= 2 + 1

    # without ``ahead`` nothing is fetched: process gets the elements as they are
    out = sorted(ThreadQueue(Fetching(), 2).process([(n, "as is") for n in names]))
    assert out == [(n, "as is") for n in names] and Fetching.state["fetched"] == []


def test_a_failing_prefetch_fails_the_stage():
    with pytest.raises(OSError, match="did not answer"):
        list(ThreadQueue(Fetching(fail="d"), 2, ahead=2).process([(n, 0) for n in "abcdefgh"]))


def test_each_thread_copy_is_torn_down():
    made = []

    class Recording(Sleeper):
        def setup(self) -> None:
            super().setup()
            made.append(self)

    list(ThreadQueue(Recording(), 2).process([(f"in{i}", 0.01) for i in range(6)]))
    assert 1 <= len(made) <= 2 and all(fn.torn_down for fn in made)


def test_in_a_local_run_the_threads_count_into_the_stage_and_every_output_arrives():
    """In Beam's local runner with 2 threads: a gathered stage run as a ThreadQueue gives
    every output, and the counters its threads increment are the stage's."""
    Sleeper.log = []
    elements = [(f"in{i}", 0.01 * (i % 3)) for i in range(12)]
    threads = local_threads(pipeline_options("FnApiRunner", 2), 2, True)
    assert threads == 2
    pipeline = beam.Pipeline(options=pipeline_options("FnApiRunner", 2))
    out = (gathered(pipeline | beam.Create(elements), "Gather", threads)
           | beam.ParDo(queued(Sleeper(), threads, weight=lambda element: element[1])))
    assert_that(out, equal_to([name for name, _ in elements]))
    result = pipeline.run()
    result.wait_until_finish()
    [counter] = result.metrics().query(MetricsFilter().with_name("slept"))["counters"]
    assert counter.committed == len(elements)


def test_only_local_worker_threads_take_the_queue():
    assert local_threads(pipeline_options("FnApiRunner", 1), 1, True) is None
    # one worker reading from an object store: a queue of one thread, for its reads ahead
    assert local_threads(pipeline_options("FnApiRunner", 1), 1, True, reads_ahead=True) == 1
    assert local_threads(pipeline_options("FnApiRunner", 3), 3, True, reads_ahead=True) == 3
    assert local_threads(pipeline_options("DataflowRunner", 1), 1, False, reads_ahead=True) is None
    one_process = pipeline_options("FnApiRunner", 1, ["--direct_running_mode=multi_processing"])
    assert local_threads(one_process, 1, True, reads_ahead=True) is None
    assert local_threads(pipeline_options("FnApiRunner", 3), 3, True) == 3
    beams_threads = pipeline_options("FnApiRunner", 2, ["--direct_running_mode=multi_threading"])
    assert local_threads(beams_threads, 2, True) == 2
    processes = pipeline_options("FnApiRunner", 2, ["--direct_running_mode=multi_processing"])
    assert local_threads(processes, 2, True) is None
    assert local_threads(pipeline_options("DataflowRunner", 4), 4, False) is None
    fn = Sleeper()
    assert queued(fn, None) is fn and isinstance(queued(fn, 2), ThreadQueue)


def test_a_gather_is_one_list_of_every_element_and_nothing_for_none():
    """``gathered`` hands the queue one list of the elements (in any order), and no list
    at all for an empty input: the queued stage then outputs nothing, as for an empty list."""
    with beam.Pipeline(options=pipeline_options("FnApiRunner", 2)) as pipeline:
        lists = gathered(pipeline | "Some" >> beam.Create(range(50)), "Gather", 2)
        assert_that(lists | beam.Map(sorted), equal_to([list(range(50))]), label="one list")
        none = gathered(pipeline | "None" >> beam.Create([]), "GatherNone", 2)
        assert_that(none, equal_to([]), label="no list")
        names = none | beam.ParDo(queued(Sleeper(), 2))
        assert_that(names, equal_to([]), label="nothing queued")
