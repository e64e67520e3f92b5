"""The Python API: load a shipped model or a training run, then sample, edit and score it.

    import diffusion_jax

    pipe = diffusion_jax.load("mnist_cond")            # a shipped model: no training, no config
    images = pipe.sample(16, sampler="dpm++2m", num_steps=20, guidance=2.0, seed=0)  # uint8
    threes = pipe.sample(8, labels=[3] * 8)            # conditional models: classes per image
    out = pipe.edit("anagram", pairs="6,9")            # the toolbox: arrays and figure paths
    eps = pipe.denoise_fn(labels)                      # (x, t) -> eps, for loops of your own
    record = pipe.fid(num_samples=1000)                # Inception FID in this process

`load` takes a shipped name (`diffusion_jax.pretrained.available()`), a folder written by
`--mode=export`, or a training workdir (its latest checkpoint, or `checkpoint=STEP|"best"`;
the config is the one saved in the checkpoint unless `config=` gives one). Keyword arguments
of `sample` are the `config.sample.*` settings of the CLI, and its images are the CLI's:
`pipe.sample(n, seed=s)` equals `--mode=sample --config.seed=s --config.sample.num_samples=n`
image for image (image i has its own key; batch size and device count do not matter).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax import checkpoint as checkpoint_lib
from diffusion_jax import cpu_devices as cpu_devices_lib
from diffusion_jax import edit_workflow, evaluate, methods, parallel, pretrained, sampling
from diffusion_jax import state as state_lib
from diffusion_jax.errors import UserError


def _config_file(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("djax_api_config", path)
    if spec is None or not os.path.isfile(path):
        raise UserError(f"config={path!r}: no such config file.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _override(config: ml_collections.ConfigDict, section: str, settings: Mapping[str, Any]):
    """`config.<section>.<key> = value` for each setting, refusing names the schema lacks."""
    for key, value in settings.items():
        if value is None:
            continue
        if key not in config[section]:
            known = ", ".join(sorted(config[section].keys()))
            raise UserError(f"{key!r} is not a config.{section} setting (they are: {known}).")
        current = config[section][key]
        config[section][key] = tuple(value) if isinstance(current, tuple) else value


@dataclasses.dataclass
class Pipeline:
    """EMA weights with their config: what `load` returns."""

    config: ml_collections.ConfigDict
    params: nnx.State
    step: int
    source: str  # the model folder or workdir the weights came from
    mesh: Mesh

    @property
    def schedule(self):
        return state_lib.build_schedule(self.config)

    @property
    def num_classes(self) -> int:
        return int(methods.get(self.config).num_classes(self.config))

    def _config(self, section: str | None = None, **settings: Any) -> ml_collections.ConfigDict:
        config = self.config.copy_and_resolve_references()
        if section:
            _override(config, section, settings)
        methods.validate_config(config)
        return config

    def sample(
        self,
        num_samples: int,
        *,
        labels: Sequence[int] | np.ndarray | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        **sample_settings: Any,
    ) -> np.ndarray:
        """`num_samples` images, uint8 [N, H, W, C]. `sample_settings`: any `config.sample.*`
        (sampler, num_steps, guidance, eta, spacing, ...). Conditional models draw image i of
        class i % num_classes unless `labels` (N of them) say otherwise."""
        n = int(num_samples)
        if n < 1:
            raise UserError(f"num_samples={n}: ask for at least one image.")
        config = self._config("sample", **sample_settings)
        if seed is not None:
            config.seed = int(seed)
        if labels is not None:
            labels = np.asarray(labels, np.int64).reshape(-1)
            if not self.num_classes:
                raise UserError("labels= needs a class-conditional model; this one is not.")
            if len(labels) != n or labels.min() < 0 or labels.max() >= self.num_classes:
                raise UserError(
                    f"labels= needs {n} classes in [0, {self.num_classes - 1}], got "
                    f"{len(labels)} in [{labels.min()}, {labels.max()}]."
                )
        batch = sampling.batch_size_for(n, batch_size or config.sample.batch_size, self.mesh)
        static, _ = methods.abstract_state(config)
        generator = sampling.make_generator(
            config, static, self.mesh, batch_size=batch, labels=labels
        )
        grid_key, _ = jax.random.split(sampling.sample_key(config))
        images, _ = sampling.generate_all(generator, self.params, n, grid_key, progress=progress)
        return images

    def denoise_fn(self, labels: Any = None, *, guidance: float | None = None):
        """The (x, t) -> eps function the samplers take (x in [-1, 1], t integer timesteps);
        conditional models need `labels` ([B] ints; `num_classes` = the null label) and guide
        with `guidance` (default `config.sample.guidance`)."""
        config = self._config("sample", guidance=guidance)
        if self.num_classes and labels is None:
            raise UserError("a class-conditional model needs labels= (num_classes = null).")
        if labels is not None:
            labels = jax.numpy.asarray(labels, jax.numpy.int32)
        graphdef = state_lib.graphdef_of(config)
        return state_lib.denoise_fn_for(config, graphdef, self.params, self.schedule, labels)

    def edit(self, kind: str, *, workdir: str | None = None, **edit_settings: Any) -> dict:
        """One toolbox edit (`config.edit.kind`: denoise, sdedit, inpaint, translate, anagram,
        hybrid) with any `config.edit.*` settings (e.g. images="a.png,b.png", indices="0-3",
        mask="centre", pairs="6,9"). Writes its figures into `workdir/edit/` (a new temporary
        folder by default) and returns {"arrays": the edit's uint8 arrays, "paths": files}."""
        config = self._config("edit", kind=kind, **edit_settings)
        workdir = workdir or tempfile.mkdtemp(prefix="diffusion_jax_edit_")
        paths = edit_workflow.run(config, workdir, weights=(self.params, self.step))
        with np.load(paths[f"{config.edit.kind}.npz"]) as z:
            arrays = {k: z[k] for k in z.files}
        return {"arrays": arrays, "paths": paths}

    def fid(self, num_samples: int = 10_000, **fid_settings: Any) -> dict:
        """The `--mode=eval` record (FID per protocol and how it was measured) of `num_samples`
        images against the cached reference statistics (`config.fid.*`: protocol, ref_split,
        ref_stats, weights, batch_size)."""
        config = self._config("fid", **fid_settings)
        config.fid.eval_samples = int(num_samples)
        evaluator = evaluate.Evaluator.create(config, self.mesh)
        return evaluator.record(self.params, self.step, num_samples=int(num_samples))


def load(
    source: str | os.PathLike,
    *,
    checkpoint: str | int | None = None,
    config: ml_collections.ConfigDict | str | None = None,
    cpu_devices: str | int = cpu_devices_lib.CPU_DEVICES_AUTO,
) -> Pipeline:
    """A `Pipeline` of a shipped model name, an exported model folder, or a training workdir.

    On a CPU, the first `load` before any JAX computation splits the host into `cpu_devices`
    JAX devices (as the CLI's --cpu_devices; "auto": twice the cores, at most 8), which about
    doubles sampling speed on two cores; after JAX has started, "auto" changes nothing."""
    value = os.fspath(source)
    cpu_devices_lib.use_cpu_devices(str(cpu_devices), [])
    mesh = parallel.make_mesh()
    model_folder = (
        value in pretrained.available() or (Path(value) / pretrained.MODEL_FILE).is_file()
    )
    if model_folder:
        if checkpoint is not None:
            raise UserError("checkpoint= picks a step of a workdir; a model folder has one.")
        folder = pretrained.resolve(value)
        which, workdir = pretrained.PREFIX + str(folder), str(folder)
        saved = pretrained.config_of(folder)
    elif (Path(value) / checkpoint_lib.LATEST_DIR).is_dir():
        which, workdir = (None if checkpoint is None else str(checkpoint)), value
        saved = _workdir_config(value, which)
    else:
        names = ", ".join(pretrained.available()) or "none"
        raise UserError(
            f"load({value!r}): neither a shipped model ({names}), a model folder (with "
            f"{pretrained.MODEL_FILE}) nor a training workdir (with {checkpoint_lib.LATEST_DIR}/)."
        )
    if isinstance(config, str):
        config = _config_file(config)
    config = saved if config is None else config
    methods.validate_config(config)
    params, step = sampling.load_ema_params(config, workdir, mesh, which)
    return Pipeline(config=config, params=params, step=int(step), source=workdir, mesh=mesh)


def _workdir_config(workdir: str, which: str | None) -> ml_collections.ConfigDict:
    ckpts = checkpoint_lib.Checkpoints(workdir, read_only=True)
    try:
        best = which == "best"
        step = ckpts.best_step() if best else (ckpts.latest_step() if which in (None, "latest")
                                               else int(which))  # fmt: skip
        if step is None:
            raise UserError(f"{workdir} has no {'best ' if best else ''}checkpoint yet.")
        return pretrained.config_from_meta(ckpts.read_meta(step, best=best))
    except ValueError:
        raise UserError(f"checkpoint={which!r}: give a step number, 'latest' or 'best'.") from None
    finally:
        ckpts.close()
