"""The package boundary: what a wheel ships, and that it runs from any folder."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "flaxner").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages"


@pytest.mark.slow
def test_wheel_ships_configs_and_finds_them_from_any_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "whl"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "whl").glob("flaxner-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = ("import flaxner.config as c; p = c.resolve_config_path('quickstart'); "
            "print(p); print(c.load_config(p).name)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert Path(out[0]).is_relative_to(tmp_path / "site")
    assert out[1] == "quickstart"
