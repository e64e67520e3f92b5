"""The package version, from one place: the `version` of pyproject.toml, as installed.

A checkout that is not installed (PYTHONPATH=.) reports "0+unknown". Checkpoint metas and FID /
quality records carry it (`checkpoint.make_meta`, `evaluate.run_description`).
"""

from importlib import metadata

try:
    __version__ = metadata.version("diffusion_jax")
except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
