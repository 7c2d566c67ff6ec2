"""Every data file the package reads at run time (configs, shipped behaviour policies) is declared as
package data, so a non-editable `pip install .` has it too."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_non_python_file_in_the_package_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    declared = set()
    for package, patterns in globs.items():
        base = ROOT / package.replace(".", "/")
        for pattern in patterns:
            declared |= set(base.glob(pattern))
    data = {p for p in (ROOT / "cleandiffuser").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert any(p.suffix == ".yaml" for p in data) and any(p.suffix == ".safetensors" for p in data)
    missing = sorted(str(p.relative_to(ROOT)) for p in data - declared)
    assert not missing, f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"
