"""docs/reliability.md's table of the faults tried on purpose, generated from the tests
marked `fault` (every test of test_faults.py, and marked tests elsewhere), so it lists
exactly what the suite tries. Regenerate with `python tests/fault_table.py`; a test
(test_foundation) fails when the file is out of date.

A row is one test: its group (test_faults.py's numbered section, else the test file), what
is tried and what it gives (the test's name, which says both), and the first sentence of
its docstring when it has one."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reliability.md"
SECTION = re.compile(r"^# =+ (\d+\. .+)$")
HEADER = """# Reliability: the faults tried

Every row is a test of `make test` that does something a user, a machine or a disk can do
to a run (kill it, fill the disk, corrupt or swap a file, feed odd input, start it twice)
and checks what the workbook gives: a bit-identical resume, a refusal that names the file
or key and says what to do, or a counted skip. Generated from the tests marked `fault` by
`python tests/fault_table.py`; `make test` fails when this file is out of date.

| group | fault tried, and what it gives | test |
| --- | --- | --- |
"""


def _is_fault_mark(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return text in ("pytest.mark.fault", "mark.fault")


def fault_tests(tests_dir: Path = ROOT / "tests") -> list[dict]:
    rows = []
    for path in sorted(tests_dir.glob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        whole_module = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                           and "pytest.mark.fault" in ast.unparse(n.value) for n in tree.body)
        sections = {i + 1: m.group(1) for i, line in enumerate(source.splitlines())
                    if (m := SECTION.match(line))}
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            if not (whole_module or any(_is_fault_mark(d) for d in node.decorator_list)):
                continue
            above = [line for line in sections if line < node.lineno]
            group = sections[max(above)] if above else path.stem.removeprefix("test_").replace("_", " ")
            doc = (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
            first = re.split(r"(?<=[.:;])\s", doc, maxsplit=1)[0] if doc else ""
            rows.append({"group": group, "name": node.name, "file": path.name,
                         "what": node.name.removeprefix("test_").replace("_", " "), "doc": first})
    return rows


def render(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        short = r["doc"] and len(r["doc"]) <= 110  # a long docstring belongs in the test, not here
        what = r["what"] + (f" ({r['doc'].rstrip('.:;')})" if short else "")
        lines.append(f"| {r['group']} | {what.replace('|', '/')} | `{r['file']}::{r['name']}` |")
    return HEADER + "\n".join(lines) + f"\n\n{len(rows)} tests.\n"


if __name__ == "__main__":
    OUT.write_text(render(fault_tests()), encoding="utf-8")
    print(f"wrote {OUT} ({len(fault_tests())} tests)", file=sys.stderr)
