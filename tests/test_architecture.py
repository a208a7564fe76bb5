"""The pure core imports no adapter: no faust, aiokafka or clickhouse_connect, and nothing from streams/ or sinks/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = ["core", "schemas", "rules"]
FORBIDDEN = {"faust", "mode", "aiokafka", "clickhouse_connect", "chdb", "streams", "sinks", "cdp_cli", "aiohttp"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", [p for pkg in PURE for p in sorted((ROOT / pkg).rglob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_core_imports_no_adapter(path):
    bad = imports(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
