"""The family registry is the single source of truth: the command line, the README, the pass
order and the rules all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnxrep import families
from onnxrep.cli import _parser
from onnxrep.families import FAMILIES, NAMES
from onnxrep.passes import MODULES, PASSES, PREPARE, regions

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_families() -> list[str]:
    """The ``--skip`` names in the README's "What it folds" table, in order."""
    text = README.read_text()
    section = text.split("## What it folds", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE)


def test_the_readme_table_lists_exactly_the_registered_families() -> None:
    assert _readme_families() == list(NAMES)


def test_skip_accepts_exactly_the_registered_names() -> None:
    parser = _parser()
    for command in ("optimize", "check"):
        args = parser.parse_args([command, "m.onnx", *(["-o", "o.onnx"] if command ==
                                                        "optimize" else []), "--skip", *NAMES])
        assert args.skip == list(NAMES)
        with pytest.raises(SystemExit):
            parser.parse_args([command, "m.onnx", "--skip", "no-such-family"])


def test_every_family_is_wired_to_its_stage() -> None:
    registered = {family for rules in regions.RULES.values() for family, _ in rules}
    for f in FAMILIES:
        module = MODULES[f.name]
        if f.stage == "regions":
            assert f.name in registered, f.name
        elif f.stage == "prepare":
            assert (f.name, module.prepare) in PREPARE
        else:
            assert (f.name, module.run) in PASSES
    assert tuple(f.name for f in FAMILIES if f.stage == "regions") == regions.LABEL_ORDER


def test_a_rule_of_an_unknown_family_fails_at_registration() -> None:
    with pytest.raises(LookupError, match="no-such"):
        regions.rule("no-such", "Conv")
    with pytest.raises(LookupError):
        families.family("conv-bn", "pass")
