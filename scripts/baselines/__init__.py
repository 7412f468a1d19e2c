"""Servers the benchmark compares gpupool with, and the launcher that starts any of them (gpupool included)."""
