"""docs/config.md is generated from the config schema's field descriptions and must not go stale."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from pydantic import BaseModel

import distill.config

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = runpy.run_path(str(ROOT / "scripts" / "config_reference.py"))  # its __name__ is not "__main__"
CONFIG_MODELS = [
    model
    for model in vars(distill.config).values()
    if isinstance(model, type)
    and issubclass(model, BaseModel)
    and model.__module__ == "distill.config"
    and model.model_fields
]


def test_docs_config_md_is_up_to_date():
    written = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert written == GENERATOR["reference"](), (
        "docs/config.md is stale; regenerate it with: python scripts/config_reference.py"
    )


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "config.md"
    stale.write_text("# an old reference\n", encoding="utf-8")
    monkeypatch.setitem(GENERATOR["main"].__globals__, "OUTPUT", stale)
    monkeypatch.setitem(GENERATOR["main"].__globals__, "ROOT", tmp_path)
    assert GENERATOR["main"](["--check"]) == 1
    assert capsys.readouterr().err.strip() == "config.md is stale; run: python scripts/config_reference.py"
    assert stale.read_text(encoding="utf-8") == "# an old reference\n"  # --check writes nothing


@pytest.mark.parametrize("model", CONFIG_MODELS, ids=lambda model: model.__name__)
def test_every_config_field_has_a_description(model):
    assert model.__doc__ and model.__doc__.strip(), f"{model.__name__} has no docstring"
    undocumented = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not undocumented, f"{model.__name__} fields without a description: {undocumented}"


def test_every_section_and_key_is_documented():
    reference = GENERATOR["reference"]()
    for section in (
        "## Top level",
        "## `teacher.training`",
        "## `students[]` (recipe: distilbert)",
        "## `students[]` (recipe: tinybert)",
        "## `students[].prediction.training` (recipe: tinybert)",
        "## `export.int8`",
        "## `bench.gates`",
    ):
        assert section in reference
    for model in CONFIG_MODELS:
        for name in model.model_fields:
            assert f"| `{name}` |" in reference, f"{model.__name__}.{name} is missing from docs/config.md"
    # a budget left unset is chosen from the data: the reference says so and points at the rule
    teacher = reference.split("## `teacher.training`")[1].split("\n## ")[0]
    assert "| `epochs` | float > 0 or null | `null` |" in teacher and "docs/budget.md" in teacher
    assert (ROOT / "docs" / "budget.md").is_file()
