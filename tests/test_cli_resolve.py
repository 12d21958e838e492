"""``--model package.module:attr`` is found in the current folder by the ``lcfast``
console script exactly as by ``python -m lcfast`` (issue 11 item 10)."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODULE = '''
import torch

def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
'''


def _console_script(bindir: Path) -> Path:
    """The launcher pip writes for ``[project.scripts] lcfast`` (its folder, not the
    current one, is ``sys.path[0]``)."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["lcfast"]
    mod, func = target.split(":")
    script = bindir / "lcfast"
    script.write_text(f"import sys\nfrom {mod} import {func}\nif __name__ == '__main__':\n    sys.exit({func}())\n")
    return script


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    (work / "mypkg").mkdir(parents=True)
    (work / "mypkg" / "__init__.py").write_text("")
    (work / "mypkg" / "models.py").write_text(MODULE)
    (tmp_path / "bin").mkdir()
    return work


def _run(cmd, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's lcfast, not the cwd
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


ARGS = ["measure", "--model", "mypkg.models:build", "--data", "random", "--size", "2", "--points", "3",
        "--dirs", "2", "--radius", "0.1", "--backend", "reference", "--device", "cpu", "--no-progress"]


def test_console_script_and_python_m_find_module_in_cwd(workdir):
    script = _console_script(workdir.parent / "bin")
    a = _run([sys.executable, str(script), *ARGS, "--out", "a.json"], workdir)
    assert a.returncode == 0, a.stderr
    b = _run([sys.executable, "-m", "lcfast", *ARGS, "--out", "b.json"], workdir)
    assert b.returncode == 0, b.stderr
    ra, rb = (json.loads((workdir / f).read_text()) for f in ("a.json", "b.json"))
    assert ra["counts"] == rb["counts"] and ra["sites"] == ["2#1"]


def test_missing_module_is_a_clear_error(workdir):
    script = _console_script(workdir.parent / "bin")
    bad = [a if a != "mypkg.models:build" else "mypkg.nomodule:build" for a in ARGS]
    r = _run([sys.executable, str(script), *bad], workdir)
    assert r.returncode == 2
    assert "--model 'mypkg.nomodule:build'" in r.stderr and "Traceback" not in r.stderr
