"""Entry point: `python -m diffusion_jax.main --config=configs/<name>.py --workdir=DIR`.

    --mode=train (default) | sample | eval | fid_stats
    --config.a.b=value     overrides any config field (see diffusion_jax/config.py)
    --checkpoint=N|best    which checkpoint sample/eval read (default: the latest)
    --coordinator_address, --num_processes, --process_id   multi-process runs (launch/)

This module only parses flags, validates, and dispatches to a mode's function. Mistakes a user
can fix (`UserError`, `ValueError`, a bad flag or config file) become one logged message and
exit code 2 (3 when training diverged), never a traceback.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import sys
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import evaluate, parallel, sampling, train, watch, writers
from diffusion_jax import state as state_lib
from diffusion_jax.errors import TrainingDivergedError, UserError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PEER_FAILED = 4


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """What a mode gets besides the config: the flags that are not config fields."""

    workdir: str
    checkpoint: str | None


def _train(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    train.train_and_evaluate(config, args.workdir)


def _sample(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    sampling.run(config, args.workdir, checkpoint=args.checkpoint)


def _eval(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    evaluate.run_eval(config, args.workdir, checkpoint=args.checkpoint)


def _fid_stats(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    evaluate.run_fid_stats(config, args.workdir)


def _train_and_eval(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    train.train_and_eval(config, args.workdir)


def _eval_watch(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    watch.run_watch(config, args.workdir, timeout_s=FLAGS.watch_timeout)


MODES: dict[str, Callable[[ml_collections.ConfigDict, RunArgs], object]] = {
    "train": _train,
    "sample": _sample,
    "eval": _eval,
    "fid_stats": _fid_stats,
    "train_and_eval": _train_and_eval,
    "eval_watch": _eval_watch,
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cifar10.py; fields overridable as --config.a.b=v."
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")
flags.DEFINE_string(
    "checkpoint", None, "Checkpoint for sample/eval: a step number, 'latest' or 'best'."
)
flags.DEFINE_float(
    "watch_timeout",
    watch.DEFAULT_TIMEOUT_S,
    "eval_watch: stop after this many seconds with nothing to evaluate and no new checkpoint.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
FLAGS = flags.FLAGS


def _fail(message: str, code: int) -> int:
    logging.error("%s", message)
    return code


def _load_config() -> ml_collections.ConfigDict:
    """The --config file's config; a file that is missing or fails to load is a UserError."""
    config = _CONFIG.value
    if config is None:
        raise UserError("--config is required, e.g. --config=configs/cifar10.py.")
    try:
        config.keys()  # config_flags defers load errors to the first access
    except OSError as e:
        raise UserError(f"--config: {e}") from e
    return config


def run(argv: list[str]) -> int:
    """Validate and dispatch; returns the process exit code."""
    writers.quiet_library_logs()
    if len(argv) > 1:
        return _fail(
            f"Unexpected arguments {argv[1:]}; flags are written --name=value.", EXIT_USER_ERROR
        )
    try:
        spec = parallel.spec_from_env(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        parallel.initialize(spec)
        config = _load_config()
        if not FLAGS.workdir:
            raise UserError("--workdir is required: the run's directory (checkpoints, metrics).")
        state_lib.validate_config(config)
        MODES[FLAGS.mode](config, RunArgs(FLAGS.workdir, FLAGS.checkpoint))
    except TrainingDivergedError as e:
        return _fail(str(e), EXIT_DIVERGED)
    except (UserError, ValueError) as e:
        return _fail(str(e), EXIT_USER_ERROR)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise  # a genuine bug or device failure: keep the traceback
        first = str(e).strip().splitlines()[0][:500]
        return _fail(
            f"A collective operation across processes failed ({first}). Another process has "
            "probably died or stalled: check its log. Restart all processes with the same "
            "command to resume from the last checkpoint.",
            EXIT_PEER_FAILED,
        )
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config file reported in one line (exit 2)."""
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - flags.Error, or whatever the config file raised
        if isinstance(e, (AttributeError, KeyError)):  # an override of a field that isn't there
            detail = str(e.args[0] if e.args else e)
            with contextlib.suppress(ValueError, SyntaxError):  # ml_collections nests reprs
                detail = str(ast.literal_eval(detail))
            detail = detail.replace("\n", ". ")
            print(f"error: unknown config field {detail}", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        print("Usage: python -m diffusion_jax.main --config=configs/<name>.py --workdir=DIR "
              "[--mode=train|sample] [--config.a.b=value ...]", file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_USER_ERROR)


def main() -> None:
    app.run(run, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
