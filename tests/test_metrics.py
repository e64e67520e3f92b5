"""The training metrics' `clu.metrics.Collection`: window means, last values, the loss's Std and
the first non-finite step, merged over calls exactly as the loop merges them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import metrics


def _window(calls):
    """The loop's accumulation: one collection per call, merged on the devices in order."""
    window, step = None, 0
    for stacked in calls:
        stacked = {n: jnp.asarray(v, jnp.float32) for n, v in stacked.items()}
        coll = metrics.from_steps(stacked, jnp.int32(step + 1))
        step += len(next(iter(stacked.values())))
        window = coll if window is None else metrics.merge(window, coll)
    return metrics.summarize(window)


def test_a_window_logs_means_last_values_and_the_loss_std():
    loss = [0.5, 0.25, 1.0, 0.75, 0.5]
    calls = [
        {"loss": loss[:2], "grad_norm": [3.0, 2.0], "lr": [1e-4, 2e-4], "kl": [1.0, 2.0]},
        {"loss": loss[2:], "grad_norm": [1.0, 5.0, 4.0], "lr": [3e-4, 4e-4, 5e-4], "kl": [3, 4, 5]},
    ]
    scalars, bad = _window(calls)
    assert bad is None
    assert set(scalars) == {"loss", "loss_std", "grad_norm", "lr", "kl"}
    assert scalars["loss"] == pytest.approx(np.mean(loss), rel=1e-6)
    assert scalars["loss_std"] == pytest.approx(np.std(loss), rel=1e-5)
    assert scalars["kl"] == pytest.approx(3.0, rel=1e-6)
    assert scalars["grad_norm"] == 4.0  # the window's last step, not its mean
    assert scalars["lr"] == pytest.approx(5e-4, rel=1e-6)


def test_the_first_non_finite_step_of_the_window_is_reported():
    calls = [
        {"loss": [0.5, 0.4], "grad_norm": [1.0, 1.0]},
        {"loss": [0.3, np.nan, np.nan], "grad_norm": [1.0, np.inf, np.nan]},
        {"loss": [np.nan], "grad_norm": [2.0]},  # a later bad step does not replace it
    ]
    _, bad = _window(calls)
    step, values = bad
    assert step == 4  # steps 1, 2 | 3, 4, 5 | 6
    assert np.isnan(values["loss"]) and values["grad_norm"] == np.inf


def test_a_metric_name_that_clashes_is_refused():
    with pytest.raises(ValueError, match="loss_std"):
        metrics.collection_type(("loss", "loss_std"))


def test_parameter_table_names_every_array_of_nested_nnx_states():
    from flax import nnx

    def state(n):
        return nnx.state(nnx.Linear(n, 2, rngs=nnx.Rngs(0)), nnx.Param)

    table = metrics.parameter_table({"generator": state(3), "discriminator": state(4)})
    assert "generator/kernel" in table and "discriminator/bias" in table
    assert "/value" not in table  # the NNX Variable's attribute is not a name of its own
    assert "(3, 2)" in table and "Mean" in table and "Std" in table
    assert table.splitlines()[-1] == "Total: 18 -- 72 bytes"  # 3*2+2 + 4*2+2 float32
