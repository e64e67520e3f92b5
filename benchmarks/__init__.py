"""Throughput benchmarks (issue 7): `python -m benchmarks.run --help`; see benchmarks/README.md.

Outside the `diffusion_jax` package on purpose: nothing in the library imports it, and torch /
diffusers (the `bench` extra) are only imported by `benchmarks.peer`, when the peer runs.
"""
