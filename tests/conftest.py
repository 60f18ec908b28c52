"""Shared test settings."""

import os

from hypothesis import HealthCheck, settings

# Property tests run the real coder; keep example counts modest for the 2-core CI.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
