"""Compile the core's per-event modules with mypyc into .local/native/ (``make setup`` runs it; see core/native.py).

A failed build is not an error: the pipeline then runs the same modules as plain Python, slower, and the reason is
in .local/native/build.log. The manifest written either way stops make from trying again until a source changes.

    python deploy/local/build_native.py            build (about 15 s on this machine)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ["CDP_PURE_PYTHON"] = "1"  # this process only reads the module list and digests from the sources
sys.path.insert(0, str(ROOT))

from core.native import COMPILED, EXT_SUFFIX, MANIFEST, native_dir, source_digests  # noqa: E402

PACKAGE = ROOT / "core"


def compile_into(out: Path) -> None:
    """mypyc's build of the modules, shared library and per-module libraries, into ``out`` (run in a child)."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(ROOT)  # mypyc names modules by their path and reads the mypy settings in pyproject.toml
    exts = mypycify([f"core/{m}.py" for m in COMPILED], opt_level="3", target_dir=str(out / "c"))
    dist = Distribution({"name": "cdp-native", "ext_modules": exts})
    dist.script_args = ["build_ext", "--build-lib", str(out / "lib"), "--build-temp", str(out / "obj")]
    dist.parse_command_line()
    dist.run_commands()


def main() -> int:
    target = native_dir(PACKAGE)
    target.parent.mkdir(parents=True, exist_ok=True)
    digests = source_digests(PACKAGE)
    work = Path(tempfile.mkdtemp(prefix="native-", dir=target.parent))
    log = work / "build.log"
    t0 = time.monotonic()
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, __file__, "--compile", str(work)], stdout=fh, stderr=subprocess.STDOUT)
    lib = work / "lib"
    groups = sorted(p.name[: -len(EXT_SUFFIX)] for p in lib.glob(f"*__mypyc{EXT_SUFFIX}")) if lib.is_dir() else []
    built = all((lib / "core" / f"{m}{EXT_SUFFIX}").is_file() for m in COMPILED)
    ok = done.returncode == 0 and built and len(groups) == 1
    manifest = {"ok": ok, "ext_suffix": EXT_SUFFIX, "group": groups[0] if ok else None, "sources": digests,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # The new build replaces the old one whole: a worker starting meanwhile sees one or the other, or, between
    # the two renames, none (it then runs the sources). Workers already running keep the libraries they loaded.
    staged = work / "native"
    staged.mkdir()
    if ok:
        shutil.move(str(lib / f"{groups[0]}{EXT_SUFFIX}"), staged)
        (staged / "core").mkdir()
        for m in COMPILED:
            shutil.move(str(lib / "core" / f"{m}{EXT_SUFFIX}"), staged / "core")
    shutil.copy(log, staged / "build.log")
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    if ok:
        print(f"compiled core ({len(COMPILED)} modules, mypyc) in {time.monotonic() - t0:.0f} s: {target}")
    else:
        print(f"compiled core NOT built; the pipeline runs as plain Python (slower). Why: {target / 'build.log'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--compile":
        compile_into(Path(sys.argv[2]))
    else:
        sys.exit(main())
