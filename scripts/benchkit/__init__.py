"""The parts of scripts/bench.py and scripts/compare.py, one concept per module."""
