"""The house's import rules, checked on the source (issue 24).

- pipelines/ use the codec through its public surface only: names in ``medcodec.__all__``.
- Decoding a record never loads the training code (float network, peft, the fitting loop).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import medcodec

REPO = Path(__file__).resolve().parents[1]


def _medcodec_uses(path: Path) -> list[tuple[int, str]]:
    """(line, what) for every use of medcodec in a module: imported names and attributes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {"medcodec"}
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medcodec":
            if node.module != "medcodec":
                uses.append((node.lineno, f"from {node.module} import ..."))
            else:
                uses.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("medcodec."):
                    uses.append((node.lineno, f"import {alias.name}"))
                elif alias.name == "medcodec" and alias.asname:
                    aliases.add(alias.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            uses.append((node.lineno, node.attr))
    return uses


def test_pipelines_use_only_the_public_codec_surface():
    public = set(medcodec.__all__)
    bad = [f"{path.relative_to(REPO)}:{line}: {what}"
           for path in sorted((REPO / "pipelines").glob("*.py"))
           for line, what in _medcodec_uses(path) if what not in public]
    assert not bad, "\n".join(bad)


def test_decoding_loads_no_training_code(tmp_path):
    """A record that names the transformer decodes with the runtime modules only."""
    import numpy as np

    image = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 37) % 4096
    blob = medcodec.compress_pixels(image, bits_stored=12, signed=False, preset="fast", local_model="llm-base-v1")
    path = tmp_path / "record.mdc"
    path.write_bytes(blob)
    code = (
        "import sys, numpy as np, medcodec\n"
        f"out = medcodec.decompress_pixels(open({str(path)!r}, 'rb').read())\n"
        "assert out.shape == (48, 64)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('peft', 'transformers')\n"
        "      or m in ('medcodec.model.floatnet', 'medcodec.model.train', 'medcodec.model.adapt')))\n"
        "print('medcodec.model.intnet' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, runtime = out.stdout.split("\n")[:2]
    assert runtime == "True"  # the integer transformer did run
    assert loaded == "[]", loaded


# Which top-level packages each package may import (downward only). jobs/cli.py's `bench`
# command is the one way into benchmarks from the product; tests may import anything.
ALLOWED = {
    "schemas": set(),
    "medcodec": {"schemas"},
    "pipelines": {"medcodec", "schemas"},
    "jobs": {"pipelines", "medcodec", "schemas"},
    "benchmarks": {"pipelines", "medcodec", "schemas"},
}
PACKAGES = {*ALLOWED, "tests"}


def test_packages_import_downward_only():
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in PACKAGES and top != package and top not in allowed and not (
                            path == REPO / "jobs" / "cli.py" and top == "benchmarks"):
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {package} imports {name}")
    assert not bad, "\n".join(bad)
