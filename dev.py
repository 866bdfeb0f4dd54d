#!/usr/bin/env python3
"""Set up the project's virtual environment, then run the quick start or the test suite.

    python3 dev.py quickstart   # install into .venv, then run sql/quickstart on the embedded default
    python3 dev.py test         # install into .venv, then run the test suite

Needs only Python 3.11 and pip. The install is skipped when nothing it depends on changed.
Extra arguments after the command go to what it runs (e.g. `python3 dev.py test -k parser`).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".byzer-like-install"
# The CPU build of torch is installed on its own first: asked for as a dependency with an open
# range, pip could pick a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _install_key() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "dev.py"):
        h.update((ROOT / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def ensure_venv() -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"byzer-like needs Python 3.11 (this is {sys.version.split()[0]}): run it as python3.11 dev.py ...")
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    key = _install_key()
    if STAMP.exists() and STAMP.read_text() == key:
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    _run(pip + [TORCH])
    _run(pip + ["-e", f"{ROOT}[test]"])
    STAMP.write_text(key)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("quickstart", "test", "setup"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    ensure_venv()
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    if cmd == "setup":
        return 0
    if cmd == "quickstart":
        return subprocess.call([str(VENV / "bin" / "byzer-like"), "quickstart", *rest], cwd=ROOT, env=env)
    return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
