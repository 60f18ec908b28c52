"""The hardening probes (benchmarks/hardening_probes.py) at their smallest setting: every
input handled, none a traceback, a hang, an allocation past the capped address space or a
silent wrong restore."""

import argparse

from benchmarks.hardening_probes import OUTCOMES, build_probes, format_table, run_probes


def test_probes_smallest_setting_find_nothing(tmp_path):
    args = argparse.Namespace(n=4, seed=0, only=["dicom", "records", "claims", "phi"])
    probes, _ = build_probes(args, tmp_path)
    result = run_probes(probes, timeout=60, headroom=3 << 30)
    counts = result["counts"]
    table = format_table(counts)
    assert all(counts[c]["tried"] > 0 for c in args.only), table
    assert all(counts[c][k] == 0 for c in counts for k in OUTCOMES if k != "clean"), (table, result["findings"])
    assert result["worker_starts"] == 1
