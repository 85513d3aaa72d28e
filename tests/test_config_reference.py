"""docs/config.md is generated from the models of xdrec.config, and documents every key."""
from __future__ import annotations

from pathlib import Path

import pytest

from xdrec.config import Config, config_sections, reference_markdown

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_reference_page_matches_the_models():
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/config.md is out of date: regenerate it with `python -m xdrec.config > docs/config.md`")


@pytest.mark.parametrize("title, model", [*config_sections(), ("top level", Config)])
def test_every_key_has_a_docstring(title, model):
    undocumented = [key for key, field in model.model_fields.items() if not field.description]
    assert not undocumented, f"{title}: keys without a docstring under them: {', '.join(undocumented)}"
