"""Pretrained models shipped with the package: sample and edit right after install, no training.

Each model is one folder, `diffusion_jax/pretrained/<name>/` (or any folder of the same layout,
e.g. one written by `--mode=export`):

- `ema.msgpack`: the EMA parameters, float32 (`flax.serialization` msgpack of the pure dict);
- `model.json`: the meta of the checkpoint they come from (config, parameter count and shapes,
  versions, training clock), the step, the sha256 of `ema.msgpack` and where it came from;
- `config.py`: `get_config()` returning that training config, so `--config=<folder>/config.py`
  (what `--pretrained=NAME` passes) takes `--config.a.b=value` overrides as any config does.

Loading checks the sha256 first, then the shapes and meaning against the config exactly as a
checkpoint restore does (`checkpoint.check_compatible`, `check_same_meaning`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from diffusion_jax import checkpoint, records
from diffusion_jax.config import base_config
from diffusion_jax.errors import CheckpointError, UserError

MODELS_DIR = Path(__file__).resolve().parent
WEIGHTS_FILE = "ema.msgpack"
MODEL_FILE = "model.json"
CONFIG_FILE = "config.py"
# Settings that name folders of the machine that trained: not carried into a model folder
_MACHINE_PATHS = (("data", "data_dir"), ("fid", "ref_stats"), ("fid", "weights"))
PREFIX = "pretrained:"  # --checkpoint=pretrained:NAME reads a model folder instead of a workdir

_CONFIG_PY = '''"""The training config of `{name}` (written by --mode=export; see model.json)."""

from diffusion_jax import pretrained


def get_config():
    return pretrained.config_of(__file__)
'''


def available() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / MODEL_FILE).is_file())


def resolve(name_or_path: str) -> Path:
    """The folder of a shipped model's name, or a folder path of the same layout."""
    value = str(name_or_path).strip()
    path = Path(os.path.expanduser(value))
    if value in available():
        return MODELS_DIR / value
    if (path / MODEL_FILE).is_file():
        return path.resolve()
    names = ", ".join(available()) or "none"
    raise UserError(
        f"--pretrained={value!r}: no such model. Shipped models: {names}; or give a folder "
        f"with {MODEL_FILE} and {WEIGHTS_FILE} (written by --mode=export)."
    )


def read_model(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MODEL_FILE
    try:
        model = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}).") from e
    if not isinstance(model, dict) or "meta" not in model or "sha256" not in model:
        raise CheckpointError(f"{path} is not a pretrained model's description.")
    return model


def _set(config: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
    """`values` (a saved config, JSON) into `config`: tuples stay tuples, new keys are added."""
    for key, value in values.items():
        if key not in config:
            config[key] = value
        elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
            _set(config[key], value)
        elif isinstance(config[key], tuple) and isinstance(value, list):
            config[key] = tuple(value)
        else:
            config[key] = value


def config_from_meta(meta: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config saved in a checkpoint's (or model's) meta, on the schema of `base_config()`
    (tuples stay tuples; settings the schema gained since keep their defaults)."""
    if not isinstance(meta.get("config"), Mapping):
        raise CheckpointError("the checkpoint's meta has no config: give the config file.")
    config = base_config()
    _set(config, meta["config"])
    return config


def config_of(folder_or_file: str | os.PathLike) -> ml_collections.ConfigDict:
    """The training config of a model folder (or of the `config.py` inside it)."""
    folder = Path(folder_or_file)
    if folder.is_file():
        folder = folder.parent
    return config_from_meta(read_model(folder)["meta"])


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_ema(folder: str | os.PathLike, abstract_params: Any, expected_meta: Mapping[str, Any]):
    """The model's EMA parameters laid out as `abstract_params` (shapes and shardings), after
    checking the file's sha256 and that the config means what the model was trained for.
    Returns (params, step)."""
    import jax
    from flax import nnx, serialization

    folder = Path(folder)
    model = read_model(folder)
    weights = folder / WEIGHTS_FILE
    where = str(folder)
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: the pretrained model is incomplete.")
    digest = sha256_of(weights)
    if digest != model["sha256"]:
        raise CheckpointError(
            f"{weights} has sha256 {digest[:16]}..., its {MODEL_FILE} says "
            f"{model['sha256'][:16]}...: the file is damaged or was replaced; reinstall the "
            "package (or export the model again)."
        )
    checkpoint.check_compatible(model["meta"], expected_meta, where)
    checkpoint.check_same_meaning(model["meta"], expected_meta, where)
    pure = serialization.msgpack_restore(weights.read_bytes())
    params = jax.tree.map(lambda a: a, abstract_params)  # a copy to fill
    nnx.replace_by_pure_dict(params, pure)
    params = jax.tree.map(
        lambda x, a: jax.device_put(np.asarray(x, dtype=a.dtype), a.sharding),
        params,
        abstract_params,
    )
    return params, int(model["step"])


def export(
    params: Any, meta: Mapping[str, Any], step: int, out_dir: str | os.PathLike, **source: Any
) -> Path:
    """Writes a model folder (`ema.msgpack`, `model.json`, `config.py`) from EMA parameters and
    their checkpoint's meta (less the machine's folders: data.data_dir, fid.ref_stats and
    fid.weights become None); `source` (e.g. workdir, checkpoint, quality record) goes into
    model.json. Each file is written atomically (`records.replace_file`)."""
    import jax
    from flax import nnx, serialization

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pure = jax.tree.map(
        lambda x: np.asarray(jax.device_get(x), np.float32), nnx.to_pure_dict(params)
    )
    blob = serialization.msgpack_serialize(pure)
    records.replace_file(out / WEIGHTS_FILE, blob)
    meta = json.loads(json.dumps(dict(meta)))  # a copy to edit
    for section, key in _MACHINE_PATHS:  # this machine's folders mean nothing elsewhere
        if isinstance(meta.get("config", {}).get(section), dict):
            meta["config"][section][key] = None
    model = {
        "name": out.name,
        "step": int(step),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "num_params": int(meta.get("num_params", 0)),
        "source": dict(source),
        "meta": meta,
    }
    records.write_json(out / MODEL_FILE, model, indent=1)
    records.replace_file(out / CONFIG_FILE, _CONFIG_PY.format(name=out.name).encode())
    return out
