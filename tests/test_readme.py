"""README's "Try it in a minute", run as written: the two commands on the shipped model and the
Python example, from a folder that is not the repository."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from train_utils import REPO, subprocess_env

README = (REPO / "README.md").read_text()
QUICK = README.split("## Try it in a minute", 1)[1].split("\n## ", 1)[0]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", QUICK, flags=re.S)


def test_the_quick_start_has_commands_and_code():
    commands = [ln for ln in _blocks("bash")[0].splitlines() if ln.startswith("diffusion-jax")]
    assert len(commands) == 2 and len(_blocks("python")) == 1


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path):
    env = subprocess_env()
    for line in _blocks("bash")[0].splitlines():
        if not line.startswith("diffusion-jax"):
            continue  # the install line: the suite runs installed
        argv = shlex.split(line.split("#", 1)[0])
        argv = [sys.executable, "-m", "diffusion_jax.main", *argv[1:]]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, (line, result.stderr[-3000:])
    assert (tmp_path / "try" / "sample" / "grid.png").is_file()
    assert (tmp_path / "try" / "edit" / "anagram.png").is_file()

    code = _blocks("python")[0]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(16, 28, 28, 1) uint8" in result.stdout
