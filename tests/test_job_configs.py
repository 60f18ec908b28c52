"""Every shipped job config is valid: it parses and yields Beam options for its runner."""

import ast
import json
from pathlib import Path

import pytest

from pipelines.runner import pipeline_options

CONFIGS = sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.json"))


def test_configs_for_each_runner_exist():
    assert {p.stem for p in CONFIGS} >= {"local", "dataflow-gpu", "flink", "spark", "portable-pool"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_yields_pipeline_options(path):
    config = json.loads(path.read_text())
    assert config["description"]
    opts = pipeline_options(config["runner"], config["workers"], config["beam_args"]).get_all_options()
    assert opts["runner"] == config["runner"]
    if path.stem == "dataflow-gpu":
        assert any("worker_accelerator" in a for a in config["beam_args"])
    if path.stem in ("flink", "spark"):  # a job-server jar and the cluster's version: no download at submit time
        assert opts[f"{path.stem}_job_server_jar"].endswith(".jar") and opts[f"{path.stem}_version"]


def test_schedule_examples_are_well_formed():
    folder = Path(__file__).parents[1] / "jobs" / "schedule"
    ast.parse((folder / "airflow_dag.py").read_text())
    cron = [l for l in (folder / "crontab").read_text().splitlines() if l and not l.startswith("#") and "=" not in l.split()[0]]
    assert len(cron) == 3 and all(len(l.split()) > 6 and "medarchive" in l.lower() for l in cron)


def test_local_workers_are_threads_unless_processes_are_asked_for():
    """--workers N on the local runner: Beam's one in-memory worker, whose costly stages
    N threads of this process take from one queue (no Beam start-up and kernel loading
    per worker, no data plane between threads); Beam's own option, passed through, still
    gives its processes or threads."""
    for n in (1, 2):
        opts = pipeline_options("FnApiRunner", n).get_all_options()
        assert (opts["direct_running_mode"], opts["direct_num_workers"]) == ("in_memory", 1)
    for mode in ("multi_processing", "multi_threading"):
        opts = pipeline_options("FnApiRunner", 2, [f"--direct_running_mode={mode}"]).get_all_options()
        assert (opts["direct_running_mode"], opts["direct_num_workers"]) == (mode, 2)


def test_local_runs_sample_bundle_states_every_few_milliseconds():
    """A bundle's end joins Beam's state sampling thread, which sleeps up to its period
    (200 ms by default): local runs' options shorten it, so a long bundle (the coding
    stage) ends within LOCAL_SAMPLING_MS of its last element."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from pipelines.runner import LOCAL_SAMPLING_MS

    pipeline_options("FnApiRunner", 2)
    sampler = statesampler.StateSampler("step", CounterFactory())
    assert sampler.sampling_period_ms == LOCAL_SAMPLING_MS < statesampler.DEFAULT_SAMPLING_PERIOD_MS
