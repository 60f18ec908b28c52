"""Shared test settings."""

import os

from hypothesis import HealthCheck, settings

# Property tests run the real coder; keep example counts modest for the 2-core CI.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist every worker is one of two processes on a 2-core machine: one torch
# thread each (and for the subprocesses tests start), or OpenMP spin-waits oversubscribe
# the cores. The transformer's bitstream does not depend on the thread count (tested).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
