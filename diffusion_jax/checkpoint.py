"""Orbax checkpoints of a `TrainState`: the latest N and the best one, with clear refusals.

Two managers, because Orbax's `max_to_keep` with a `best_fn` may delete the newest step (the one
a restart needs): `workdir/checkpoints` keeps the latest `keep` steps, `workdir/best` keeps one,
replaced only when a new value of the best metric is lower.

Each step stores the items `params`, `ema_params`, `opt_state`, `progress` (step and RNG key),
one item per further field of the method's state (e.g. `model_state`: BatchNorm statistics) and a
JSON `meta` (config, parameter count and shapes, versions). Items restore independently, so
sampling reads the EMA parameters alone. Before anything is restored the shapes in `meta` are
compared with the config's model; a checkpoint that differs or cannot be read raises
`CheckpointError` and is never written to or deleted.

Saves and restores are collective: every process calls them (Orbax coordinates who writes).

A save that fails (a full disk, a read-only or vanished folder), in its synchronous part or in
Orbax's background threads, raises one `CheckpointSaveError` naming the step, the reason and the
last intact checkpoint (which a restart resumes from). The hundreds of tracebacks Orbax's threads
and TensorStore's pending writes would print for it are dropped (`_quiet_orbax_failures`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from diffusion_jax.config import CONFIGS_DIR
from diffusion_jax.errors import CheckpointError, CheckpointSaveError
from diffusion_jax.version import __version__

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
STATE_ITEMS = ("params", "ema_params", "opt_state", "progress")  # every method's state has these
_PROGRESS_FIELDS = ("step", "rng")  # saved together as the item "progress"


def tree_shapes(tree: Any) -> dict[str, list[int]]:
    """`{path: shape}` of a pytree's leaves: what must match for a checkpoint to restore."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


def make_meta(config: ml_collections.ConfigDict, params: Any, **extra: Any) -> dict[str, Any]:
    """The JSON saved beside every checkpoint (and what restores are checked against)."""
    shapes = tree_shapes(params)
    return {
        "config": json.loads(config.to_json_best_effort()),
        "num_params": int(sum(math.prod(s) for s in shapes.values())),
        "param_shapes": shapes,
        "versions": {
            "diffusion_jax": __version__,
            "jax": jax.__version__,
            "orbax": getattr(ocp, "__version__", "?"),
        },
        **extra,
    }


def _count(n: int) -> str:
    """35.7M for big models, 163,985 for small ones."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _flat(d: Mapping[str, Any], prefix: str = "config") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}.{k}"))
        else:
            out[f"{prefix}.{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`config.a.b: checkpoint X, now Y` for every setting that differs."""
    a, b = _flat(saved), _flat(current)
    return _differences(a, b, sorted(set(a) | set(b)))


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """`config.a.b: checkpoint X, now Y` for each of the flat `keys` whose values differ."""
    return [f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _example_configs(method: str, dataset: str | None) -> list[str]:
    """The packaged recipes named for `method` on `dataset` (`configs/gan_mnist.py`; DDPM's
    are named for the dataset alone), those that exist."""
    names = [f"{dataset}.py"] if method == "ddpm" else [f"{method}_{dataset}.py", f"{method}.py"]
    found = [n for n in names if dataset and (CONFIGS_DIR / n).is_file()]
    return [f"configs/{n}" for n in found]


def check_same_method(saved: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise `CheckpointError` when the checkpoint was trained by another `config.method` (a GAN
    checkpoint read with a DDPM config): said first, instead of the shapes that then differ."""
    have = saved.get("config") or {}
    if not have:
        return  # an old meta without its config: the shapes decide
    trained, asked = have.get("method", "ddpm"), expected["config"].get("method", "ddpm")
    if trained == asked:
        return
    dataset = (have.get("data") or {}).get("dataset")
    examples = _example_configs(trained, dataset)
    fits = f" (e.g. {' or '.join(examples)})" if examples else ""
    raise CheckpointError(
        f"The checkpoint in {where} was trained with config.method={trained!r}; the config is a "
        f"{asked!r} config. Give a {trained!r} config{fits}, the one it was trained with (its "
        "settings are saved in the checkpoint's meta), or another --workdir. The checkpoint was "
        "left untouched."
    )


def check_compatible(saved: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise `CheckpointError` unless the checkpoint is of the config's method
    (`check_same_method`) and the saved parameter shapes are the config's."""
    check_same_method(saved, expected, where)
    have, want = saved.get("param_shapes"), expected["param_shapes"]
    if have == want:
        return
    if have is None:
        raise CheckpointError(f"{where} has no parameter shapes in its meta; it is not ours.")
    n_have, n_want = saved.get("num_params", 0), expected["num_params"]
    differing = [k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    examples = ", ".join(
        f"{k}: checkpoint {have.get(k)}, config {want.get(k)}" for k in differing[:3]
    )
    model_diffs = [
        d
        for d in config_differences(saved.get("config", {}), expected["config"])
        if d.startswith(("config.model.", "config.data.image_size", "config.data.channels"))
    ]
    raise CheckpointError(
        f"The checkpoint in {where} does not fit the config: the checkpoint has "
        f"{_count(n_have)} parameters, the config builds {_count(n_want)} "
        f"({len(differing)} tensors differ, e.g. {examples}).\n"
        + ("Settings that differ: " + "; ".join(model_diffs) + ".\n" if model_diffs else "")
        + "The checkpoint was left untouched. Pick another --workdir, or make the config match "
        "the checkpoint's (its config is saved in the checkpoint's meta)."
    )


# Settings that say what a trained network computes, beyond its shapes: sampling or scoring it
# under other values gives wrong images without any error (a T=100 model run with T=1000).
# For DIP (whose "weights" are its restorations of K given images) the images, their split and
# their noise: its report under other values would name the wrong images or noise.
_MEANING = ("config.method", "config.data.dataset")
_MEANING_OF = {
    "ddpm": ("config.diffusion.",),
    "dip": (
        "config.dip.split",
        "config.dip.indices",
        "config.dip.noise_sigma",
        "config.dip.clip_noisy",
    ),
}
# Settings added after checkpoints were written whose earlier behaviour is not their default: a
# checkpoint of that method without the setting was trained with this value (every other
# setting newer than a checkpoint is no difference).
_EARLIER_VALUES = {"dip": {"config.dip.split": "train"}}  # DIP fitted train images before
# ... except the training's loss weighting: a network trained under any weighting is sampled and
# scored the same way (a min-SNR checkpoint under a uniform config is no error).
_TRAINING_ONLY = ("config.diffusion.loss_weighting", "config.diffusion.min_snr_gamma")


def check_same_meaning(saved: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise `CheckpointError` if the config would use the weights in `where` under another
    method, dataset or (for DDPM) noise schedule, (for DIP) other images or noise than they
    were trained with."""
    have, want = saved.get("config"), expected["config"]
    if not have:
        return  # an old meta without its config: the shapes were checked
    method = have.get("method", "ddpm")
    trained = {**_EARLIER_VALUES.get(method, {}), **_flat(have)}
    wanted = _flat(want)
    keys = _MEANING + _MEANING_OF.get(want.get("method", "ddpm"), ())
    meaning = [k for k in sorted(trained) if k.startswith(keys) and k not in _TRAINING_ONLY]
    diffs = _differences(trained, wanted, meaning)
    if not diffs:
        return
    flags = " ".join(f"--{key}={trained[key]}" for key in (d.split(":")[0] for d in diffs))
    raise CheckpointError(
        f"The checkpoint in {where} was trained with other settings than the config asks for: "
        + "; ".join(diffs)
        + f". Its samples and scores would be wrong. Use the checkpoint's settings ({flags}) "
        "or another --workdir."
    )


def _manager(
    directory: str, keep: int, read_only: bool, items: tuple[str, ...]
) -> ocp.CheckpointManager | None:
    if read_only and not os.path.isdir(directory):
        return None  # nothing saved there; a read-only manager must not create it
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only
    )
    return ocp.CheckpointManager(directory, options=options, item_names=(*items, "meta"))


def _fields(state: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(state)]


def _state_items(state: Any) -> dict[str, Any]:
    """The Orbax items of a state: one per field, with step and RNG key together as `progress`
    (for DDPM's `TrainState`: exactly `STATE_ITEMS`)."""
    items = {n: getattr(state, n) for n in _fields(state) if n not in _PROGRESS_FIELDS}
    items["progress"] = {n: getattr(state, n) for n in _PROGRESS_FIELDS}
    return items


def item_names(state: Any | None) -> tuple[str, ...]:
    """The items a state is saved as (`STATE_ITEMS` when no state is given)."""
    return STATE_ITEMS if state is None else tuple(_state_items(state))


# Key of a checkpoint's meta holding the training time up to it (wall and CPU seconds of the
# process(es), summed over resumes): time budgets and quality records count it, not one run's.
TRAIN_CLOCK = "train_clock"


class Checkpoints:
    """The run's checkpoints in `workdir`: save, restore latest/step/best, wait for saves.

    `read_only` (sampling, evaluation) creates nothing and never deletes.
    """

    def __init__(self, workdir: str, *, keep: int = 3, read_only: bool = False, state: Any = None):
        """`state` (a method's state or its abstract shapes): the items it saves and restores;
        None: `STATE_ITEMS` (enough to read the EMA parameters of any method)."""
        self.workdir = os.path.abspath(os.fspath(workdir))  # Orbax refuses relative paths
        self.latest_dir = os.path.join(self.workdir, LATEST_DIR)
        self.best_dir = os.path.join(self.workdir, BEST_DIR)
        self._read_only = read_only
        check_folders(self.workdir)
        _quiet_orbax_failures()  # a failed save, or a failed read of a corrupt checkpoint
        items = item_names(state)
        self._latest = _manager(self.latest_dir, keep, read_only, items)
        self._best = _manager(self.best_dir, 1, read_only, items)
        self._best_seen: dict[str, float] = {}  # metric -> best value saved (see save_best)
        self._pending: dict[str, int] = {}  # directory -> step of the last save started there
        self._failure: CheckpointSaveError | None = None  # the first failed save, if any

    # ----------------------------------------------------------------- queries

    def latest_step(self) -> int | None:
        return self._latest.latest_step() if self._latest else None

    def best_step(self) -> int | None:
        return self._best.latest_step() if self._best else None

    def all_steps(self, *, best: bool = False) -> list[int]:
        manager = self._manager_for(best)
        return list(manager.all_steps()) if manager else []

    def best_value(self, metric: str) -> float:
        """The best checkpoint's value of `metric` (inf when there is none or it is another)."""
        step = self.best_step()
        if step is None:
            return math.inf
        best = self.read_meta(step, best=True).get("best")
        if not best or best.get("metric") != metric:
            return math.inf
        return float(best["value"])

    # ----------------------------------------------------------------- saving

    def save(self, state: Any, meta: Mapping[str, Any]) -> bool:
        """Start an async save of `state` at its step (skipped if that step is already saved)."""
        step = int(state.step)
        if step in self.all_steps():
            return False
        args = self._save_args(state, meta)
        self._finish_other(self._best, self.best_dir)
        return self._guarded(
            self._latest, self.latest_dir, step, lambda: self._latest.save(step, args=args)
        )

    def save_best(self, state: Any, meta: Mapping[str, Any], metric: str, value: float) -> bool:
        """Save `state` as the best one if `value` of `metric` beats the current best.

        The best value is read from disk once, then kept in memory: a decision read from files
        that an async save is still writing could differ between processes, and a save that
        only some processes start never finishes.
        """
        if self._best_seen.get(metric) is None:
            self._best_seen[metric] = self.best_value(metric)
        if not math.isfinite(value) or value >= self._best_seen[metric]:
            return False
        meta = {**meta, "best": {"metric": metric, "value": float(value)}}
        step = int(state.step)
        if step in self.all_steps(best=True):
            return False
        self._best_seen[metric] = float(value)
        args = self._save_args(state, meta)
        self._finish_other(self._latest, self.latest_dir)
        return self._guarded(
            self._best, self.best_dir, step, lambda: self._best.save(step, args=args)
        )

    def _finish_other(self, manager: ocp.CheckpointManager | None, directory: str) -> None:
        """Multi-process: let the other manager's async save finish before this one starts.

        Orbax names its cross-process commit barrier after the step only
        (`_async_write_complete.<step>`), so the latest and the best manager saving the same
        step at once collide ("Barrier ... is already ongoing") and the run hangs at exit.
        """
        if manager is not None and jax.process_count() > 1:
            self._guarded(manager, directory, None, manager.wait_until_finished)

    @staticmethod
    def _save_args(state: Any, meta: Mapping[str, Any]) -> ocp.args.Composite:
        items = {k: ocp.args.StandardSave(v) for k, v in _state_items(state).items()}
        return ocp.args.Composite(**items, meta=ocp.args.JsonSave(dict(meta)))

    def wait(self) -> None:
        """Block until every async save is on disk; raises `CheckpointSaveError` if one failed.

        After a failure has been raised, later calls (cleanup in `finally` blocks) stay quiet.
        """
        for manager, directory in ((self._latest, self.latest_dir), (self._best, self.best_dir)):
            if manager:
                self._guarded(manager, directory, None, manager.wait_until_finished)

    def close(self) -> None:
        for manager, directory in ((self._latest, self.latest_dir), (self._best, self.best_dir)):
            if manager:
                self._guarded(manager, directory, None, manager.close)

    def _guarded(
        self, manager: ocp.CheckpointManager, directory: str, step: int | None, call: Callable
    ) -> Any:
        """Runs `call` (a save of `step`, a wait or a close); a failure becomes one
        `CheckpointSaveError`, raised once: after it, calls only clean up and no save starts."""
        if self._failure is not None:
            if step is not None:
                raise self._failure
            try:
                return call()
            except Exception:  # noqa: BLE001 - the same failure again; already reported
                return None
        try:
            result = call()
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise ValueError, OSError, ...
            pending = self._pending.get(directory)
            failed = (
                pending if pending is not None and pending not in _finalized(directory) else step
            )
            self._failure = self._save_error(directory, failed, e)
            raise self._failure from e
        if step is not None:
            self._pending[directory] = step
        return result

    def _save_error(
        self, directory: str, step: int | None, error: Exception
    ) -> CheckpointSaveError:
        reason, code = _os_reason(error)
        intact = [s for s in _finalized(self.latest_dir) if s != step]
        what = f"step {step}" if step is not None else "a checkpoint"
        if intact:
            last = (
                f"The last intact checkpoint is step {max(intact)} in {self.latest_dir}; "
                "a restart with the same command resumes from it."
            )
        else:
            last = "No checkpoint was completed before it: a restart begins from scratch."
        if code in (errno.ENOSPC, errno.EDQUOT):
            free = _free_bytes(directory)
            fix = "Free disk space" + (
                f" ({free / 2**20:.0f} MiB free now)" if free is not None else ""
            )
            fix += " or point --workdir at a bigger disk, then restart."
        else:
            fix = "Fix the cause, then restart."
        logging.debug("checkpoint save failure", exc_info=error)
        return CheckpointSaveError(
            f"Saving the checkpoint of {what} in {directory} failed ({reason}). {last} {fix}"
        )

    # ----------------------------------------------------------------- restoring

    def _manager_for(self, best: bool) -> ocp.CheckpointManager | None:
        return self._best if best else self._latest

    def _where(self, step: int, best: bool) -> str:
        return os.path.join(self.best_dir if best else self.latest_dir, str(step))

    def read_meta(self, step: int, *, best: bool = False) -> dict[str, Any]:
        where = self._where(step, best)
        try:
            out = self._manager_for(best).restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
            meta = out["meta"]
        except Exception as e:  # noqa: BLE001 - any failure means the files are unusable
            raise _unreadable(where, e) from e
        if not isinstance(meta, dict):
            raise _unreadable(where, ValueError("its meta is missing"))
        return meta

    def _resolve(self, step: int | None, best: bool) -> int | None:
        have = self.all_steps(best=best)
        if step is None:
            return max(have) if have else None
        if step not in have:
            raise CheckpointError(
                f"There is no checkpoint of step {step} in "
                f"{self.best_dir if best else self.latest_dir}; saved steps: {have or 'none'}."
            )
        return step

    def restore(
        self, abstract_state: Any, expected_meta: Mapping[str, Any], step: int | None = None
    ) -> Any | None:
        """The full state of `step` (default: latest), or None if nothing is saved.

        `abstract_state` gives shapes, dtypes and shardings (`methods.abstract_state`).
        """
        step = self._resolve(step, best=False)
        if step is None:
            return None
        where = self._where(step, False)
        meta = self.read_meta(step)
        check_compatible(meta, expected_meta, where)
        args = {k: ocp.args.StandardRestore(v) for k, v in _state_items(abstract_state).items()}
        try:
            out = self._latest.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001
            raise (_earlier_method(meta, where) or _unreadable(where, e)) from e
        fields = {k: v for k, v in out.items() if k in _fields(abstract_state)}
        restored = abstract_state.replace(**fields, **out["progress"])
        if int(restored.step) != step:
            raise _unreadable(where, ValueError(f"it says step {int(restored.step)}"))
        return restored

    def restore_ema(
        self,
        abstract_params: Any,
        expected_meta: Mapping[str, Any],
        step: int | None = None,
        *,
        best: bool = False,
    ) -> tuple[Any, int]:
        """Only the EMA parameters (what sampling needs), of `step` / latest / the best one."""
        resolved = self._resolve(step, best)
        if resolved is None:
            raise CheckpointError(
                f"No checkpoint in {self.best_dir if best else self.latest_dir}: train first "
                "(--mode=train with the same --workdir) or point --workdir at a trained run."
            )
        where = self._where(resolved, best)
        meta = self.read_meta(resolved, best=best)
        check_compatible(meta, expected_meta, where)
        check_same_meaning(meta, expected_meta, where)
        try:
            out = self._manager_for(best).restore(
                resolved,
                args=ocp.args.Composite(ema_params=ocp.args.StandardRestore(abstract_params)),
            )
        except Exception as e:  # noqa: BLE001
            raise _unreadable(where, e) from e
        return out["ema_params"], resolved


def _earlier_method(meta: Mapping[str, Any], where: str) -> CheckpointError | None:
    """Why a full restore failed when the checkpoint was written by an earlier form of its
    method, whose training state (optimizer state) differs from today's: the VAE-GAN before
    Larsen et al.'s (issue 24; its settings had `adv_weight`, not `gamma`). None otherwise."""
    config = meta.get("config") or {}
    settings = config.get("vae_gan") or {}
    if config.get("method") != "vae_gan" or "gamma" in settings:
        return None
    return CheckpointError(
        f"The checkpoint in {where} was written by the earlier VAE-GAN method (before Larsen "
        "et al.'s VAE-GAN, with config.vae_gan.adv_weight), whose optimizer state (the earlier "
        "clipped Adam) is not today's (clipped per network), so training cannot resume from "
        "it. Its weights still load for sampling and evaluation (--mode=sample, --mode=eval, "
        "--mode=export); to train, start a new --workdir. The checkpoint was left untouched."
    )


def _unreadable(where: str, error: Exception) -> CheckpointError:
    logging.debug("checkpoint read failure", exc_info=error)
    return CheckpointError(
        f"The checkpoint in {where} cannot be read ({_first_reason(error)}). "
        "It may be corrupt or incomplete; it was left untouched. Move it away to resume from an "
        "earlier checkpoint, or pick another --workdir."
    )


# TensorStore's messages: `STATUS: Error opening ...: Error reading ... file "PATH": reason
# [source locations=...] [tensorstore_spec=...]`. Only the innermost reason and the file count.
_STATUS = re.compile(r"^(?:[A-Z_]+: )+")
_TRAILER = re.compile(r"\s*\[(?:source locations|os_error_code|tensorstore_spec).*$")
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_SEGMENT = re.compile(r": (?=[A-Z])")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
# Orbax's wrapper of a failed array read ends in the repr of a bound method (not the spec):
# "... See full TensorStore details: <bound method pybind11_detail_....spec of TensorStore({".
_DETAILS = re.compile(r"\s*See full TensorStore details:.*", re.DOTALL)


def _first_reason(error: BaseException) -> str:
    """One clean line: the innermost meaningful message of `error` and its causes, and the file
    it concerns when the library names one."""
    chain, seen = [], set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):  # the root cause says most
        if isinstance(e, OSError) and e.strerror:
            name = f": {e.filename}" if e.filename else ""
            return f"{e.strerror}{name}"
    # Orbax's wrapper of a failed array read says nothing its cause does not: skip it.
    texts = [str(e).strip() for e in chain if not _DETAILS.search(str(e))]
    text = next((t for t in texts if t), "") or _DETAILS.sub("", str(error)).strip()
    if not text:
        return type(error).__name__
    line = _STATUS.sub("", _TRAILER.sub("", text.splitlines()[0])).strip()
    segments = _SEGMENT.split(line)
    reason = segments[-1]
    paths = _QUOTED_PATH.findall(line)
    if len(segments) > 1 and paths and paths[-1] not in reason:
        reason += f" (file {paths[-1]})"
    return reason[:400] + ("..." if len(reason) > 400 else "")


def _os_reason(error: BaseException) -> tuple[str, int | None]:
    """`(strerror, errno)` of the OSError behind a failed save (also when TensorStore wrapped it
    in a ValueError's text), else `(first line, None)`."""
    e: BaseException | None = error
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.strerror or os.strerror(e.errno), e.errno
        text = str(e)
        match = _OS_CODE.search(text)
        if match:
            code = int(match.group(1))
            return os.strerror(code), code
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO):
            if os.strerror(code) in text:
                return os.strerror(code), code
        e = e.__cause__ or e.__context__
    return _first_reason(error), None


def check_folders(workdir: str) -> None:
    """Raise `CheckpointError` when `workdir/checkpoints` or `workdir/best` is a file (Orbax would
    see no checkpoint there, and every save would fail)."""
    for name in (LATEST_DIR, BEST_DIR):
        directory = os.path.join(workdir, name)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise CheckpointError(
                f"{directory} is a file, not a folder: move it away (nothing was read or written)."
            )


def check_best_is_ours(workdir: str, ckpt_every: int) -> None:
    """Raise `CheckpointError` when a run in `workdir` would start from scratch (no completed
    checkpoint in `checkpoints/`) while `best/` holds one it would replace: that best checkpoint
    was written by another run (whose `checkpoints/` is gone) and is not this run's to delete.

    A best checkpoint of a step <= `ckpt_every` is this run's own: a run stopped before its first
    checkpoint completed leaves it, and the restart repeats those steps exactly.
    """
    check_folders(workdir)
    best = _finalized(os.path.join(workdir, BEST_DIR))
    if not best or max(best) <= ckpt_every or _finalized(os.path.join(workdir, LATEST_DIR)):
        return
    raise CheckpointError(
        f"{os.path.join(workdir, BEST_DIR)} holds the best checkpoint of step {max(best)}, but "
        f"{os.path.join(workdir, LATEST_DIR)} has no checkpoint to resume from: training would "
        "start from step 0 and replace it. Nothing was changed. To train from scratch here, move "
        f"{os.path.join(workdir, BEST_DIR)} away; or pick another --workdir."
    )


def _finalized(directory: str) -> list[int]:
    """Steps whose save completed: Orbax renames `N.orbax-checkpoint-tmp*` to `N` at the end."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n))
    )


def stranded_threads() -> list[threading.Thread]:
    """Orbax's background threads still running once every save was waited for: after a failed
    save they wait for signals of its step that never come (up to Orbax's coordination timeout),
    and as non-daemon threads they would keep the interpreter from exiting."""
    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and not t.daemon and type(t).__module__.startswith("orbax.")
    ]


def _free_bytes(directory: str) -> int | None:
    path = directory
    while path and not os.path.isdir(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return None


class _DropOrbaxErrors(logging.Filter):
    """Drops the ERROR records of a failed save (with tracebacks, one per Orbax thread, and
    asyncio's "Task exception was never retrieved" for each pending write): the failure reaches
    the caller as an exception, which becomes one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        in_orbax = f"{os.sep}orbax{os.sep}"
        if in_orbax in (record.pathname or ""):
            return False
        if record.name != "asyncio":
            return True
        message = record.getMessage()
        frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
        from_orbax = in_orbax in message or ".orbax-checkpoint-tmp" in message
        return not (from_orbax or any(in_orbax in f.filename for f in frames))


def _is_save_debris(unraisable: Any) -> bool:
    """An exception nobody can catch, left by a failed async save: TensorStore completing a
    write after its event loop closed, or a pending Orbax write coroutine at interpreter exit."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    in_orbax = f"{os.sep}orbax{os.sep}"
    return any(in_orbax in f.filename for f in frames) or in_orbax in repr(
        getattr(unraisable.object, "cr_code", "")
    )


_quiet_installed = False


def _quiet_orbax_failures() -> None:
    """Installs (once per process) the filters that keep a failed save to one message."""
    global _quiet_installed
    if _quiet_installed:
        return
    _quiet_installed = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DropOrbaxErrors())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_save_debris(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
