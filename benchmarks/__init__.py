"""Benchmarks: our codec against standard lossless codecs (compare), split-plane sweep (split_sweep).

What the command-line tools here share: ``write_json`` (their ``--json`` output) and
``no_images`` (the message and exit status of a run that found nothing to measure).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def write_json(path: str | None, payload: Any) -> None:
    """``payload`` as indented JSON at ``path``, where one was given (``--json``)."""
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)


def no_images(message: str, report: Any) -> int:
    """Say on stderr that no image was measured (``message``) and why each input was
    skipped (``report``: a ``medcodec.model.images.InputReport``); the exit status, 2."""
    print(message, file=sys.stderr)
    for skip in report.skipped:
        print(f"  skipped {skip.name}: {skip.reason}", file=sys.stderr)
    return 2
