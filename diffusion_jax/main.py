"""Entry point: `python -m diffusion_jax.main --config=NAME|FILE --workdir=DIR` (`diffusion-jax`).

    --config=cifar10       a recipe of the package (diffusion_jax/configs/; `configs/` in a
                           checkout links there), or any config file's path

    --mode=train (default) | sample | eval | fid_stats | train_and_eval | eval_watch | edit
           | dip_prior (a DIP run's images through this DDPM: --config.dip_prior.dip_workdir=W)
           | export (a checkpoint's EMA weights as a model folder: --export_to=FOLDER)
    --pretrained=NAME|DIR  sample/eval/edit/dip_prior with a shipped model (no --config)
    --watch_timeout=S      eval_watch: exit after S seconds without a new checkpoint
    --config.a.b=value     overrides any config field (see diffusion_jax/config.py)
    --checkpoint=N|best    which checkpoint sample/eval read (default: the latest)
    --coordinator_address, --num_processes, --process_id   multi-process runs (launch/)

This module only parses flags, validates, and dispatches to a mode's function. Mistakes a user
can fix (`UserError`, a bad flag or config file) become one logged message and exit code 2 (3
when training diverged), never a traceback; anything else (a bug, a `ValueError` from JAX or the
library core) keeps its traceback and exits 1. Before anything is built or created, the workdir
and, for the modes that read it, the dataset are checked (seconds, not a model build).

JAX's persistent compilation cache is on by default: `$XDG_CACHE_HOME/diffusion_jax/jax_cache`
(`~/.cache/...`), or `DJAX_COMPILATION_CACHE=DIR`; `DJAX_COMPILATION_CACHE=off` turns it off. A
`JAX_COMPILATION_CACHE_DIR` (or `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`) set by the user wins.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import (
    checkpoint,
    cpu_devices,
    data,
    dip_prior,
    edit_workflow,
    evaluate,
    methods,
    parallel,
    pretrained,
    sampling,
    train,
    watch,
    writers,
)
from diffusion_jax import config as config_lib
from diffusion_jax.errors import TrainingDivergedError, UserError, blocking_file
from diffusion_jax.methods.base import REPORT_DIR

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PEER_FAILED = 4

CACHE_ENV = "DJAX_COMPILATION_CACHE"
CACHE_OFF = ("off", "0", "false", "no", "none")
CACHE_MIN_COMPILE_TIME_S = 1.0  # programs that compile faster are not worth a cache entry


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """What a mode gets besides the config: the flags that are not config fields."""

    workdir: str
    checkpoint: str | None
    config_file: str | None = None  # the --config file (recorded in FID records)


def _train(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    train.train_and_evaluate(config, args.workdir)


def _sample(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    sampling.run(config, args.workdir, checkpoint=args.checkpoint)


def _eval(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    evaluate.run_eval(
        config, args.workdir, checkpoint=args.checkpoint, config_file=args.config_file
    )


def _fid_stats(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    evaluate.run_fid_stats(config, args.workdir)


def _train_and_eval(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    train.train_and_eval(config, args.workdir, config_file=args.config_file)


def _eval_watch(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    watch.run_watch(
        config, args.workdir, timeout_s=FLAGS.watch_timeout, config_file=args.config_file
    )


def _edit(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    edit_workflow.run(config, args.workdir, checkpoint=args.checkpoint)


def _dip_prior(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    dip_prior.run(config, args.workdir, checkpoint=args.checkpoint, config_file=args.config_file)


def _export(config: ml_collections.ConfigDict, args: RunArgs) -> None:
    if not FLAGS.export_to:
        raise UserError("--mode=export needs --export_to=FOLDER (the model folder to write).")
    sampling.export(config, args.workdir, FLAGS.export_to, args.checkpoint)


TRAIN_MODES = ("train", "train_and_eval")
MODES: dict[str, Callable[[ml_collections.ConfigDict, RunArgs], object]] = {
    "train": _train,
    "sample": _sample,
    "eval": _eval,
    "fid_stats": _fid_stats,
    "train_and_eval": _train_and_eval,
    "eval_watch": _eval_watch,
    "edit": _edit,
    "dip_prior": _dip_prior,
    "export": _export,
}
PRETRAINED_MODES = ("sample", "eval", "edit", "dip_prior")  # the modes --pretrained serves

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
flags.DEFINE_string(
    "pretrained",
    None,
    "sample/eval/edit with a shipped model (e.g. mnist_cond) or a folder written by "
    "--mode=export; its config is the default --config, --workdir (outputs) defaults to NAME.",
)
flags.DEFINE_string("export_to", None, "--mode=export: the model folder to write.")
flags.DEFINE_string(
    "cpu_devices",
    cpu_devices.CPU_DEVICES_AUTO,
    "JAX devices to split the host CPU into ('auto': up to twice the cores, at most 8, that "
    "split the batches evenly; XLA:CPU keeps about one core busy per device). No effect on "
    "GPUs.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
FLAGS = flags.FLAGS


def _fail(message: str, code: int) -> int:
    logging.error("%s", message)
    return code


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """`$DJAX_COMPILATION_CACHE` (None when "off"), else `$XDG_CACHE_HOME/diffusion_jax/jax_cache`
    (default `~/.cache/diffusion_jax/jax_cache`)."""
    value = environ.get(CACHE_ENV, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    if value:
        return os.path.expanduser(value)
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffusion_jax", "jax_cache")


def configure_compilation_cache(environ: Mapping[str, str] = os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache; returns the folder in use (None: off).

    A cache folder the user already chose (`JAX_COMPILATION_CACHE_DIR`, or set in jax.config)
    is kept as it is, and so is a user's `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`.
    """
    chosen = environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if chosen:
        return chosen
    directory = compilation_cache_dir(environ)
    if directory is None:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_TIME_S)
    return directory


def _not_a_config_dict(config_file: str, value: object) -> str:
    what = "None" if value is None else f"a {type(value).__name__}"
    return (
        f"the config file {config_file}: get_config() returned {what}, not an ml_collections."
        "ConfigDict; start it from diffusion_jax.config.base_config() and return that (see "
        "configs/tiny.py)."
    )


def _not_a_config_dict_error(config_file: str) -> str | None:
    """`_not_a_config_dict`'s message when the config file's get_config() runs and returns no
    ConfigDict (a config override then fails on it while the flags are parsed); else None."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("djax_config_check", config_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        returned = module.get_config()
    except Exception:  # noqa: BLE001 - a file that does not run is config_file_error's case
        return None
    if isinstance(returned, ml_collections.ConfigDict):
        return None
    return _not_a_config_dict(config_file, returned)


def _load_config() -> ml_collections.ConfigDict:
    """The --config file's config; a file that is missing or fails to load, or whose
    get_config() returns something else than a ConfigDict, is a UserError."""
    config = _CONFIG.value
    config_file = (
        config_flags.get_config_filename(FLAGS["config"]) if FLAGS["config"].present else None
    )
    if config is None and not config_file:
        raise UserError("--config is required, e.g. --config=configs/cifar10.py.")
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(_not_a_config_dict(config_file, config))
    try:
        config.keys()  # config_flags defers load errors to the first access
    except OSError as e:
        raise UserError(f"--config: {e}") from e
    return config


# The folders a run keeps in its workdir (what reads or writes them): a regular file of one of
# these names made Orbax see an empty workdir, or a mode fail after its work.
WORKDIR_FOLDERS = (
    checkpoint.LATEST_DIR,  # train modes write, the others read
    checkpoint.BEST_DIR,  # ditto
    train.SAMPLES_DIR,  # training's sample grids
    evaluate.OUTPUT_DIR,  # eval, eval_watch, train_and_eval
    sampling.OUTPUT_DIR,  # sample
    edit_workflow.OUTPUT_DIR,  # edit
    dip_prior.OUTPUT_DIR,  # dip_prior
    REPORT_DIR,  # sample, for the methods with a report (denoiser, DIP)
)


def check_workdir(workdir: str) -> None:
    """Raise `UserError` when `workdir`, a folder above it, or one of the `WORKDIR_FOLDERS` in it
    is a file (before anything is read, created or computed)."""
    path = Path(os.path.abspath(workdir))
    blocker = blocking_file(path)
    if blocker is not None:
        where = "is" if blocker == path else f"lies under {blocker}, which is"
        raise UserError(f"--workdir={workdir} {where} a file, not a folder.")
    files = [n for n in WORKDIR_FOLDERS if (path / n).exists() and not (path / n).is_dir()]
    if files:
        names = ", ".join(str(path / name) for name in files)
        raise UserError(
            f"--workdir={workdir} holds a file where the run keeps a folder: {names}. Move "
            f"{'it' if len(files) == 1 else 'them'} away or pick another --workdir; nothing was "
            "read or written."
        )


def _reference_missing(config: ml_collections.ConfigDict) -> bool:
    """True when some protocol has no reference statistics file yet (eval would then read the
    data). Any network's file counts: the network is only known once its weights are loaded."""
    for protocol in evaluate.protocols_of(config):
        pattern = evaluate.reference_path(config, protocol, "*")  # "*" in place of the checksum
        if not any(pattern.parent.glob(pattern.name)):
            return True
    return False


def check_data(config: ml_collections.ConfigDict, mode: str) -> None:
    """Fail in seconds when a mode would read a split that is not prepared (see `data`).

    A config without the fields is left to `validate_config`, which names what is missing.
    """
    try:
        d = config.data
        # the split the loop trains on: "train", DIP's config.dip.split (`Method.data_split`)
        splits = {methods.get(config).data_split(config)} if mode in TRAIN_MODES else set()
        evaluates = mode in ("eval", "eval_watch", "train_and_eval") or config.fid.every
        if mode == "fid_stats" or (evaluates and _reference_missing(config)):
            splits.add(config.fid.ref_split)
        if mode in (*TRAIN_MODES, "eval_watch") and config.train.heldout_examples:
            splits.add("test")  # the held-out loss's images
        dataset, data_dir = d.dataset, d.data_dir
        size, channels = d.image_size, d.channels
    except (AttributeError, KeyError):
        return
    info = data.DATASETS.get(dataset)
    num_classes = config.get("model", {}).get("num_classes", 0)
    if mode in TRAIN_MODES and info is not None and isinstance(num_classes, int):
        data.check_num_classes(info, num_classes)  # else check_labels, after the data read
    fixes = data.shape_fixes(info, size, channels) if splits and info is not None else {}
    if fixes:  # all that does not fit, in one message, with the flags
        why = {"image_size": "no resizing is done", "channels": "no grayscale conversion is done"}
        flags = [f"--config.data.{k}={v} ({why[k]})" for k, v in fixes.items()]
        raise UserError(
            f"{dataset} images are {info.image_size}x{info.image_size}x{info.channels}, the "
            f"config asks for {size}x{size}x{channels}: set " + " and ".join(flags) + "."
        )
    for split in sorted(splits):
        data.check_prepared(dataset, split, data_dir)


def run(argv: list[str]) -> int:
    """Validate and dispatch; returns the process exit code."""
    writers.quiet_library_logs()
    if len(argv) > 1:
        return _fail(
            f"Unexpected arguments {argv[1:]}; flags are written --name=value.", EXIT_USER_ERROR
        )
    # Signals before a mode has anything to save stop at once with a message (train modes
    # replace this handler with theirs, which saves, once training runs).
    stop = train.StopRequest(
        when=f"during --mode={FLAGS.mode}",
        note="nothing half-written was left (each output file is written whole or not at all)",
    )
    with stop:
        return _run_mode()


def _run_mode() -> int:
    try:
        configure_compilation_cache()
        spec = parallel.spec_from_env(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        parallel.initialize(spec)
        config = _load_config()
        _split_cpu(config, multi_process=spec is not None)
        workdir, which = FLAGS.workdir, FLAGS.checkpoint
        if FLAGS.pretrained:
            workdir, which = _pretrained_args(FLAGS.pretrained, FLAGS.mode, workdir, which)
        if not workdir:
            raise UserError("--workdir is required: the run's directory (checkpoints, metrics).")
        check_workdir(workdir)
        check_data(config, FLAGS.mode)
        methods.validate_config(config)
        config_file = config_flags.get_config_filename(FLAGS["config"])
        MODES[FLAGS.mode](config, RunArgs(workdir, which, config_file))
    except train.TrainingStopped as e:
        logging.warning("%s", e)
        parallel.wait_for_computations()
        # A stopped training run is a clean stop (as one stopped after saving); another mode
        # stopped by a signal did not do its job: the shell's code for that signal.
        return 0 if FLAGS.mode in TRAIN_MODES else 128 + e.signum
    except TrainingDivergedError as e:
        return _fail(str(e), EXIT_DIVERGED)
    except UserError as e:
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


def _split_cpu(config: ml_collections.ConfigDict, *, multi_process: bool) -> None:
    """--cpu_devices before JAX starts: the batches of this config must split evenly."""
    sizes = [
        int(config[section].batch_size)
        for section in ("train", "sample")
        if section in config and "batch_size" in config[section]
    ]
    n = cpu_devices.use_cpu_devices(FLAGS.cpu_devices, sizes, multi_process=multi_process)
    if n is not None:
        logging.info("JAX's CPU backend: %d devices (--cpu_devices=%s).", n, FLAGS.cpu_devices)


def _pretrained_args(
    name: str, mode: str, workdir: str | None, which: str | None
) -> tuple[str, str]:
    """(workdir, checkpoint) for `--pretrained=name`: outputs in `workdir` (default: a folder
    named after the model), weights from the model folder."""
    if mode not in PRETRAINED_MODES:
        raise UserError(
            f"--pretrained serves --mode={'|'.join(PRETRAINED_MODES)}, not --mode={mode} (to "
            "train, give --config and --workdir)."
        )
    if which:
        raise UserError("--pretrained and --checkpoint both choose the weights: give one.")
    folder = pretrained.resolve(name)
    if not workdir:
        workdir = folder.name
        logging.info("Writing into ./%s (--workdir chooses another folder).", workdir)
    return workdir, pretrained.PREFIX + str(folder)


def _with_recipe_names(argv: list[str]) -> list[str]:
    """`--config=NAME` (a recipe of the package, e.g. cifar10) as the packaged file's path; a
    name that is neither a file nor a recipe stops with the list of recipes."""
    out = _joined(argv)
    for i, arg in enumerate(out):
        if arg.startswith(("--config=", "-config=")):
            flag, value = arg.split("=", 1)
            resolved = config_lib.resolve_config_arg(value)
            path = resolved.partition(":")[0]
            if not os.path.exists(path) and "/" not in path and not path.endswith(".py"):
                print(
                    f"error: --config={value}: no such file or recipe. Recipes: "
                    f"{', '.join(config_lib.recipe_names())} (or give a config file's path).",
                    file=sys.stderr,
                )
                sys.exit(EXIT_USER_ERROR)
            out[i] = f"{flag}={resolved}"
    return out


def _joined(argv: list[str], names: tuple[str, ...] = ("config", "pretrained")) -> list[str]:
    """`--name value` written as `--name=value` for the flags read before absl parses."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.lstrip("-") in names and arg.startswith("-") and i + 1 < len(argv):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def _flag_value(argv: list[str], name: str) -> str | None:
    """The last `--name=value` (or `-name=value`) of `argv`, after `_joined`."""
    value = None
    for arg in _joined(argv):
        if arg.startswith((f"--{name}=", f"-{name}=")):
            value = arg.split("=", 1)[1]
    return value


def _with_pretrained_config(argv: list[str]) -> list[str]:
    """`--pretrained=X` without `--config`: the model's own config file becomes `--config`."""
    name = _flag_value(argv, "pretrained")
    if not name or _config_file(argv):
        return argv
    try:
        folder = pretrained.resolve(name)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    return [argv[0], f"--config={folder / pretrained.CONFIG_FILE}", *argv[1:]]


def _config_file(argv: list[str]) -> str | None:
    """The value of --config in `argv` (without config_flags' optional `:argument`)."""
    value = _flag_value(argv, "config")
    if value and not os.path.exists(value) and ":" in value:
        value = value.split(":", 1)[0]
    return value


def _same_file(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.abspath(a) == os.path.abspath(b)


def config_file_error(e: BaseException, config_file: str | None) -> str | None:
    """The message for an exception raised while loading the config file; None if it is not
    about the file (an override of an unknown field, a bad flag)."""
    if not config_file:
        return None
    if isinstance(e, AttributeError) and getattr(e, "name", None) == "get_config":
        return (
            f"the config file {config_file} has no get_config() function; a config file "
            "defines get_config() returning the ConfigDict (see configs/tiny.py)."
        )
    frames = traceback.extract_tb(e.__traceback__)
    in_file = any(_same_file(f.filename, config_file) for f in frames)
    if isinstance(e, SyntaxError) and e.filename:
        in_file = True
        where = f"{e.filename}, line {e.lineno}"
    else:
        where = next(
            (f"{f.filename}, line {f.lineno}" for f in reversed(frames)
             if not f.filename.startswith("<") and "site-packages" not in f.filename),
            None,
        )  # fmt: skip
    if not in_file:
        return None
    detail = (e.msg if isinstance(e, SyntaxError) else str(e)).replace("\n", " ")
    at = f" ({where})" if where else ""
    return f"the config file {config_file} failed to load: {type(e).__name__}: {detail}{at}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config file reported in one line (exit 2)."""
    argv = _with_pretrained_config(_with_recipe_names(argv))
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - flags.Error, or whatever the config file raised
        about_file = config_file_error(e, _config_file(argv))
        if about_file:
            print(f"error: {about_file}", file=sys.stderr)
        elif isinstance(e, (AttributeError, KeyError)) and (
            not_a_config := _config_file(argv) and _not_a_config_dict_error(_config_file(argv))
        ):  # the override failed on what get_config() returned
            print(f"error: {not_a_config}", file=sys.stderr)
        elif isinstance(e, (AttributeError, KeyError)):  # an override of a field that isn't there
            detail = str(e.args[0] if e.args else e)
            with contextlib.suppress(ValueError, SyntaxError):  # ml_collections nests reprs
                detail = str(ast.literal_eval(detail))
            detail = detail.replace("\n", ". ")
            print(f"error: unknown config field {detail}", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        print("Usage: python -m diffusion_jax.main --config=configs/<name>.py --workdir=DIR "
              f"[--mode={'|'.join(MODES)}] [--config.a.b=value ...]", file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_USER_ERROR)


def _run_process(argv: list[str]) -> int:
    """`run` as the CLI's whole process: after a failed checkpoint save, Orbax's background
    threads wait (for its coordination timeout, many minutes) for signals of the failed step that
    never come, and would keep the process from exiting. They hold nothing left to save (the
    failure was reported), so a failed process exits with its code without waiting for them; a
    successful one (every save waited for) exits as usual."""
    code = run(argv)
    if code != 0 and checkpoint.stranded_threads():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main() -> None:
    app.run(_run_process, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
