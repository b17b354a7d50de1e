"""The README's "Testing your app" recipes run as they stand (issue 12, point 5).

Each ``<!-- recipe: NAME/FILE -->`` code block is written to FILE in a fresh directory, and
pytest runs the recipe there in its own process, warnings as errors, with no ``META_*``
variable of ours leaking in: what a user who copies the files gets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- recipe: (\w+)/([\w.]+) -->\n```python\n(.*?)\n```", re.S)


def _recipes() -> dict[str, dict[str, str]]:
    recipes: dict[str, dict[str, str]] = {}
    for name, path, body in BLOCK.findall(README.read_text(encoding="utf-8")):
        recipes.setdefault(name, {})[path] = body + "\n"
    return recipes


def test_the_readme_has_a_recipe_per_framework() -> None:
    assert sorted(_recipes()) == ["django", "fastapi", "flask"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fastapi", "flask", "django"])
def test_the_recipe_passes(name: str, tmp_path: Path) -> None:
    for path, body in _recipes()[name].items():
        (tmp_path / path).write_text(body, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "DJANGO_"))}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout
    assert "failed" not in run.stdout
