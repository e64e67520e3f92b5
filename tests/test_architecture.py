"""Rules import-linter cannot express: who may touch the topology and TensorFlow."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion_jax"


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_only_parallel_touches_jax_distributed():
    offenders = []
    for path in _sources():
        if path.name == "parallel.py":
            continue
        text = path.read_text()
        if "jax.distributed" in text or "from jax import distributed" in text:
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, f"only diffusion_jax/parallel.py may use jax.distributed: {offenders}"


def test_no_module_level_tensorflow_or_torch_import():
    """TF and torch are optional at run time: import them inside functions only."""
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in {"tensorflow", "torch"}:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert not offenders, offenders


def test_package_imports_without_tensorflow_or_torch():
    """Every module imports where TensorFlow and torch are absent (the GPU machine)."""
    modules = [
        "diffusion_jax." + str(p.relative_to(PACKAGE).with_suffix("")).replace("/", ".")
        for p in _sources()
        if p.name not in {"__init__.py", "__main__.py"}
    ]
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'torch'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_design_md_opens_with_the_layer_diagram_of_the_contracts():
    """docs/DESIGN.md's diagram is generated from pyproject.toml's import-linter contracts
    (scripts/layer_diagram.py), never drawn by hand: a changed contract must regenerate it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import layer_diagram
    finally:
        sys.path.pop(0)
    text = layer_diagram.DESIGN.read_text()
    assert layer_diagram.updated(text, layer_diagram.block()) == text, (
        "docs/DESIGN.md's layer diagram is stale: run python scripts/layer_diagram.py"
    )
    assert text.index(layer_diagram.BEGIN) < text.index("| module | owns |")  # it opens the page
    assert '"errors · version"' in text and "L0 --> L1" in text
