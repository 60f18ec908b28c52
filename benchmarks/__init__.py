"""Benchmarks: our codec against standard lossless codecs (compare), split-plane sweep (split_sweep)."""
