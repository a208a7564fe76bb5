"""Compiled forms of the core's per-event modules, used only when they were built from exactly these sources.

``make setup`` compiles the modules named in ``COMPILED`` with mypyc (``deploy/local/build_native.py``) into
``.local/native/``, with a manifest of the digests of the sources it compiled. The package puts that directory first
on its search path only when every digest matches the source beside it, so an edited module is never shadowed by
a stale build, and nothing changes where no build exists (an installed wheel, a machine without a C compiler).
``CDP_PURE_PYTHON=1`` turns it off. The compiled modules do what the source says: the test suite runs on them, and
``tests/core/test_native.py`` checks that both forms turn the same events into the same bytes.

Why: the ingest sets the pipeline's pace on one machine (docs/performance.md); compiled, its per-event CPU in these
modules falls by about a fifth.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path

# The modules of the per-event path: the ingest's (validation aside, which is msgspec's and pydantic's own compiled
# code) and the person stage's.
COMPILED = ("batching", "envelope", "identifiers", "ids", "ingest", "normalize", "person", "rows", "timers")
MANIFEST = "manifest.json"
EXT_SUFFIX: str = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def native_dir(package_dir: Path) -> Path:
    """Where ``make setup`` puts the build for the package in ``package_dir``."""
    return package_dir.parent / ".local" / "native"


def source_digests(package_dir: Path) -> dict[str, str]:
    return {f"{m}.py": hashlib.sha256((package_dir / f"{m}.py").read_bytes()).hexdigest() for m in COMPILED}


def usable_build(package_dir: Path) -> dict | None:
    """The build's manifest when the build matches this interpreter and every source, else None."""
    root = native_dir(package_dir)
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
        fresh = (manifest.get("ok") and manifest.get("ext_suffix") == EXT_SUFFIX
                 and manifest.get("sources") == source_digests(package_dir))
    except (OSError, ValueError, AttributeError):
        return None
    # Every library there: a module missing from the build would run as source beside compiled ones.
    libraries = [root / f"{manifest.get('group')}{EXT_SUFFIX}",
                 *(root / package_dir.name / f"{m}{EXT_SUFFIX}" for m in COMPILED)]
    return manifest if fresh and all(p.is_file() for p in libraries) else None


def enable(package_path: list[str]) -> bool:
    """Put a fresh build first on the package's search path (``core.__path__``); True when it is in use."""
    if os.environ.get("CDP_PURE_PYTHON", "") not in ("", "0"):
        return False
    package_dir = Path(package_path[0])
    manifest = usable_build(package_dir)
    if manifest is None:
        return False
    root = native_dir(package_dir)
    # mypyc puts the compiled code of all the modules in one shared library that each module's own small library
    # imports by its top-level name; it is loaded from the build directory, leaving sys.path alone.
    group = manifest["group"]
    if group not in sys.modules:
        try:
            spec = importlib.util.spec_from_file_location(group, root / f"{group}{EXT_SUFFIX}")
            if spec is None or spec.loader is None:
                return False
            module = importlib.util.module_from_spec(spec)
            sys.modules[group] = module
            spec.loader.exec_module(module)
        except (ImportError, OSError):  # a library that does not load here: the sources run
            sys.modules.pop(group, None)
            return False
    package_path.insert(0, str(root / package_dir.name))
    return True
