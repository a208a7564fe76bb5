"""The layering between packages, as docs/architecture.md draws it: each package imports only the packages below it
(``LAYERS``), the pure ones no adapter library (``PURE_FORBIDDEN``), and every top-level package has its place.

Every import counts, at module level or inside a function: a lazy import is still a dependency."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Package -> the project's packages it may import. Pure: schemas, rules, core, analytics, traffic (no I/O library).
# config is deployment settings: the adapters read it, the pure core never does (its inputs are explicit).
LAYERS: dict[str, set[str]] = {
    "schemas": set(),
    "rules": {"schemas"},
    "core": {"schemas", "rules"},
    "analytics": {"schemas", "rules", "core"},
    "traffic": {"schemas", "rules", "core"},
    "config": set(),
    "sinks": {"schemas", "rules", "core", "config"},
    "streams": {"schemas", "rules", "core", "config", "sinks"},
    "ops": {"schemas", "rules", "core", "config", "sinks", "streams"},
    "bench": {"schemas", "rules", "core", "config", "sinks", "streams", "ops", "analytics", "traffic"},
    "cdp_cli": {"schemas", "rules", "core", "config", "sinks", "streams", "ops", "analytics", "traffic", "bench"},
}
PURE = ["schemas", "rules", "core", "analytics", "traffic"]
# Libraries that do I/O or belong to one adapter: Kafka and Faust (streams), ClickHouse (sinks), HTTP, metrics.
ADAPTER_LIBRARIES = {"faust", "mode", "aiokafka", "clickhouse_connect", "chdb", "aiohttp", "prometheus_client",
                     "rocksdict", "pydantic_settings"}
PURE_FORBIDDEN = ADAPTER_LIBRARIES
# Which adapter may use which library: ClickHouse only through sinks, Kafka and Faust only through streams (ops and
# bench drive Kafka as tools do; bench measures RocksDB's bytes on disk), settings only through config.
LIBRARY_OWNERS = {
    "clickhouse_connect": {"sinks"},
    "chdb": {"sinks"},
    "faust": {"streams", "bench"},
    "mode": {"streams"},
    "aiokafka": {"streams", "ops", "bench"},
    "rocksdict": {"streams", "bench"},
    "pydantic_settings": {"config"},
    "aiohttp": {"streams", "bench"},
    "prometheus_client": {"streams"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def sources() -> list[tuple[str, Path]]:
    return [(pkg, p) for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_every_package_has_a_layer():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk == set(LAYERS), f"declare the layer of {sorted(on_disk - set(LAYERS))} in LAYERS" \
        if on_disk - set(LAYERS) else f"LAYERS names packages that do not exist: {sorted(set(LAYERS) - on_disk)}"


def test_layers_are_acyclic():
    for pkg, below in LAYERS.items():
        for other in below:
            assert pkg not in LAYERS[other], f"{pkg} and {other} may import each other"


@pytest.mark.parametrize("pkg,path", sources(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_imports_only_packages_below(pkg, path):
    ours = (imports(path) & set(LAYERS)) - {pkg}
    bad = ours - LAYERS[pkg]
    assert not bad, f"{path.relative_to(ROOT)} ({pkg}) imports {sorted(bad)}; {pkg} may import {sorted(LAYERS[pkg])}"


@pytest.mark.parametrize("pkg,path", sources(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_adapter_libraries_stay_in_their_adapter(pkg, path):
    used = imports(path)
    if pkg in PURE:
        bad = used & PURE_FORBIDDEN
        assert not bad, f"{path.relative_to(ROOT)} is pure ({pkg}) but imports {sorted(bad)}"
    for lib, owners in LIBRARY_OWNERS.items():
        if lib in used and pkg != "cdp_cli":
            assert pkg in owners, f"{path.relative_to(ROOT)} ({pkg}) imports {lib}, which belongs to {sorted(owners)}"


def test_the_cli_imports_no_adapter_library():
    """cdp_cli parses arguments and prints: the work is in the packages it calls."""
    for path in sorted((ROOT / "cdp_cli").rglob("*.py")):
        bad = imports(path) & ADAPTER_LIBRARIES
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
