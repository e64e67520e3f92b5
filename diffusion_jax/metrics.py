"""Training metrics as a `clu.metrics.Collection`, accumulated on the devices.

A method's train step returns a dict of float32 scalars (`methods.base`). The loop's compiled
call (`train.make_train_call`) turns the `steps_per_call` steps' values into one `Collection`
(`from_steps`): an `Average` per metric (the log window's mean), a `LastValue` for the learning
rate and names ending in `grad_norm` (the window's last step), a `Std` of the loss
(`loss_std`, the spread of the per-step losses over the window) and `FirstNonFinite`, the first
step of the window at which some metric was NaN or infinite, with the metrics of that step. The
loop merges the calls' collections on the devices (`merge`, compiled) and fetches and reduces
them at log time only (`summarize`).

Under `jax.jit` the step's values are already global (XLA reduces over the batch's devices and
hosts), so each call's collection is replicated: every process holds the same one, and no
`all_gather` is needed. `clu.metrics` needs no TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from clu import parameter_overview

LAST_VALUE_METRICS = ("lr",)  # and names ending in "grad_norm": logged as the window's last
STD_METRICS = ("loss",)  # also logged as NAME_std: the spread over the window's steps
NONFINITE = "nonfinite"  # the Collection's field holding the first non-finite step


def is_last_value(name: str) -> bool:
    return name in LAST_VALUE_METRICS or name.endswith("grad_norm")


@flax.struct.dataclass
class FirstNonFinite(clu_metrics.Metric):
    """The first step at which some metric was not finite (-1: none), and every metric's value
    at that step (zeros while none was)."""

    step: jnp.ndarray
    values: dict[str, jnp.ndarray]

    @classmethod
    def from_model_output(
        cls, stacked: Mapping[str, jnp.ndarray], first_step: jnp.ndarray, **_
    ) -> FirstNonFinite:
        bad = jnp.zeros(next(iter(stacked.values())).shape, bool)
        for v in stacked.values():
            bad |= ~jnp.isfinite(v)
        i = jnp.argmax(bad)
        found = bad.any()
        step = jnp.where(found, first_step + i, -1).astype(jnp.int32)
        values = {n: jnp.where(found, v[i], 0.0).astype(jnp.float32) for n, v in stacked.items()}
        return cls(step=step, values=values)

    def merge(self, other: FirstNonFinite) -> FirstNonFinite:  # `self` is the earlier window
        keep = self.step >= 0
        pick = lambda a, b: jnp.where(keep, a, b)  # noqa: E731
        return type(self)(
            step=pick(self.step, other.step), values=jax.tree.map(pick, self.values, other.values)
        )

    def compute(self) -> jnp.ndarray:
        return self.step


@flax.struct.dataclass
class Std(clu_metrics.Std):
    """`clu.metrics.Std` whose `compute` runs on current JAX (CLU 0.0.12 calls
    `jnp.clip(a_min=...)`, a keyword JAX 0.10 no longer takes)."""

    def compute(self) -> jnp.ndarray:
        mean = self.total / self.count
        return jnp.maximum(self.sum_of_squares / self.count - mean**2, 0.0) ** 0.5


def _field(kind: type[clu_metrics.Metric], pick) -> type[clu_metrics.Metric]:
    return kind.from_fun(lambda stacked, **_: pick(stacked))


@functools.cache
def collection_type(names: tuple[str, ...]) -> type[clu_metrics.Collection]:
    """The `Collection` of a method's metrics `names` (one class per name tuple: the compiled
    merge is traced once)."""
    fields: dict[str, type[clu_metrics.Metric]] = {}
    for name in names:
        if is_last_value(name):
            fields[name] = _field(clu_metrics.LastValue, lambda s, n=name: s[n][-1])
        else:
            fields[name] = _field(clu_metrics.Average, lambda s, n=name: s[n])
    for name in STD_METRICS:
        if name in names:
            std = f"{name}_std"
            if std in names:
                raise ValueError(f"metric {std!r} clashes with the Std of {name!r}")
            fields[std] = _field(Std, lambda s, n=name: s[n])
    if NONFINITE in fields:
        raise ValueError(f"a metric may not be called {NONFINITE!r}")
    fields[NONFINITE] = FirstNonFinite
    return clu_metrics.Collection.create(**fields)


def from_steps(stacked: Mapping[str, jax.Array], first_step: jax.Array) -> clu_metrics.Collection:
    """The collection of k consecutive steps: `stacked` holds each metric's k values [k] in
    step order, `first_step` is the step number (after its update) of the first of them."""
    stacked = dict(stacked)
    cls = collection_type(tuple(stacked))
    return cls.single_from_model_output(stacked=stacked, first_step=first_step)


@jax.jit
def merge(earlier: clu_metrics.Collection, later: clu_metrics.Collection):
    """Two windows' collections as one (on the devices): the windows in order."""
    return earlier.merge(later)


def summarize(
    collection: clu_metrics.Collection,
) -> tuple[dict[str, float], tuple[int, dict[str, float]] | None]:
    """(one value per metric for a log line, None or (first non-finite step, the metrics that
    were not finite at it)). Fetches the collection from the devices."""
    host = jax.device_get(collection)
    bad = getattr(host, NONFINITE)
    scalars = {
        name: float(np.asarray(v)) for name, v in host.compute().items() if name != NONFINITE
    }
    if int(bad.step) < 0:
        return scalars, None
    values = {n: float(v) for n, v in bad.values.items() if not np.isfinite(v)}
    return scalars, (int(bad.step), values)


# The held-out metrics of a checkpoint (`heldout`, `methods.vae`): the mean of the per-example
# (DDPM: per image and timestep) losses and their spread, computed inside the compiled function.
HeldoutMetrics = clu_metrics.Collection.create(
    heldout_loss=clu_metrics.Average.from_output("loss"),
    heldout_loss_std=Std.from_output("loss"),
)


def heldout_scalars(losses: np.ndarray) -> dict[str, float]:
    """{"heldout_loss": mean, "heldout_loss_std": spread} of a method's held-out per-example
    losses (any shape, fetched from the devices), through `HeldoutMetrics`."""
    collection = HeldoutMetrics.single_from_model_output(loss=jnp.asarray(losses).reshape(-1))
    return {name: float(v) for name, v in jax.device_get(collection.compute()).items()}


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def parameter_table(params) -> str:
    """`clu.parameter_overview`'s table of a parameter pytree (any nesting: NNX states, dicts of
    them): name, shape, dtype, size, mean and std of each array, and the total count and bytes.
    """
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [_key_name(k) for k in path]
        if len(names) > 1 and names[-1] == "value":  # an NNX Variable's array
            names = names[:-1]
        flat["/".join(names)] = leaf
    return parameter_overview.get_parameter_overview(flat, include_stats=True)


__all__ = [
    "LAST_VALUE_METRICS",
    "STD_METRICS",
    "FirstNonFinite",
    "Std",
    "collection_type",
    "from_steps",
    "is_last_value",
    "merge",
    "parameter_table",
    "summarize",
]
