#!/usr/bin/env python3
"""Strip outputs, execution counts and widget state from notebooks before they are committed.

    python scripts/strip_notebooks.py            # every notebooks/*.ipynb, in place
    python scripts/strip_notebooks.py --check    # exit 1 and name the files that need stripping

As a git pre-commit hook: ``ln -s ../../scripts/strip_notebooks.py .git/hooks/pre-commit`` -- run with
no arguments from a hook it checks (and fails the commit) instead of rewriting files behind your back.
Outputs can hold keys, addresses and megabytes of images; the course ships clean notebooks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def strip(nb: dict) -> dict:
    from vpnedu.exercises.build import strip_outputs   # the same cleaning 'vpnedu labs build' does
    return strip_outputs(nb)


def main(argv: list[str]) -> int:
    check = "--check" in argv or Path(sys.argv[0]).name == "pre-commit"
    paths = [Path(a) for a in argv if not a.startswith("--")] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for p in paths:
        text = p.read_text(encoding="utf-8")
        clean = json.dumps(strip(json.loads(text)), indent=1, ensure_ascii=False) + "\n"
        if clean != text:
            dirty.append(p)
            if not check:
                p.write_text(clean, encoding="utf-8")
    if check and dirty:
        print("notebooks with outputs (run: python scripts/strip_notebooks.py): "
              + ", ".join(str(p) for p in dirty), file=sys.stderr)
        return 1
    if not check and dirty:
        print(f"stripped {len(dirty)} notebook(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
