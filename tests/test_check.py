"""``onnxrep check`` (the CI gate and its exit codes) and ``onnxrep.testing``'s assertions."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from onnxrep.cli import EXIT_BAD_INPUT, EXIT_MISMATCH, EXIT_OK, EXIT_TOO_SLOW, main
from onnxrep.errors import OnnxrepError
from onnxrep.testing import assert_equivalent, assert_optimizes
from tests.builders import GraphBuilder
from tests.helpers import perturbed
from tests.test_cli import repvgg_model

FAST = ["--runs", "3", "--warmup", "0", "--seeds", "1"]


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(repvgg_model(), path)
    return path


def test_check_passes(model_path: Path, tmp_path: Path, capsys) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["check", str(model_path), *FAST]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"{model_path}: check passed: parity ok, speedup ")
    assert "parity     ok" in out and "latency" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_check_json_and_report(model_path: Path, tmp_path: Path, capsys) -> None:
    md = tmp_path / "check.md"
    assert main(["check", str(model_path), *FAST, "--min-speedup", "0.01", "--json",
                 "--report", str(md)]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["check"] == {"ok": True, "code": 0, "reason": data["check"]["reason"],
                             "min_speedup": 0.01}
    assert data["output"] is None and data["written"] is False
    assert data["parity"]["ok"] and data["timing"]["speedup"] > 0
    assert "**check passed**" in md.read_text(encoding="utf-8")


def test_check_parity_failure_exits_1(model_path: Path, wrong_optimizer, capsys) -> None:
    assert main(["check", str(model_path), *FAST]) == EXIT_MISMATCH
    captured = capsys.readouterr()
    assert "check FAILED: outputs differ beyond tolerance" in captured.out
    assert "onnxrep: check failed: outputs differ" in captured.err
    assert "latency" not in captured.out  # timing is skipped once parity fails


def test_check_speedup_below_the_bar_exits_3(model_path: Path, tmp_path: Path,
                                             capsys) -> None:
    page = tmp_path / "check.html"
    code = main(["check", str(model_path), *FAST, "--runs", "10", "--min-speedup", "1000",
                 "-q", "--report", str(page)])
    assert code == EXIT_TOO_SLOW
    captured = capsys.readouterr()
    assert captured.out == ""  # --quiet: only the failure on stderr
    assert "is below --min-speedup 1000x" in captured.err
    assert "Check FAILED: speedup" in page.read_text(encoding="utf-8")


def test_check_usage_errors_exit_2(model_path: Path, tmp_path: Path) -> None:
    assert main(["check", str(model_path), "--min-speedup", "0"]) == EXIT_BAD_INPUT
    assert main(["check", str(tmp_path / "missing.onnx")]) == EXIT_BAD_INPUT
    assert main(["check", str(model_path), "--report", "r.pdf"]) == EXIT_BAD_INPUT
    with pytest.raises(SystemExit) as e:
        main(["check", str(model_path), "--skip", "nonsense"])
    assert e.value.code == EXIT_BAD_INPUT


def test_help_documents_exit_code_3(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "3  speedup below --min-speedup" in capsys.readouterr().out


# -- onnxrep.testing -----------------------------------------------------------------------------


def test_assert_equivalent_accepts_protos_and_paths(model_path: Path) -> None:
    model = repvgg_model()
    result = assert_equivalent(model, model_path, seeds=1)
    assert result.ok and result.seeds == 1


def test_assert_equivalent_raises_with_a_table(model_path: Path) -> None:
    with pytest.raises(AssertionError) as e:
        assert_equivalent(model_path, perturbed(repvgg_model()), seeds=2, atol=1e-6, rtol=1e-5)
    text = str(e.value)
    lines = text.splitlines()
    assert lines[0].startswith(f"b differs from {model_path}: 1 of 1 output(s) beyond tolerance")
    assert lines[1].split() == ["output", "dtype", "shape", "max", "abs", "bound", "max", "rel",
                                "mean", "abs", "cosine", "note"]
    assert lines[2].split()[:3] == ["BAD", repvgg_model().graph.output[0].name, "float32"]
    assert "1e-06" not in lines[2]  # the bound is atol + rtol * max|ref|, not atol alone


def test_assert_equivalent_bad_input_is_an_error_not_a_failure(tmp_path: Path) -> None:
    with pytest.raises(OnnxrepError):
        assert_equivalent(tmp_path / "missing.onnx", repvgg_model())


def test_assert_optimizes(model_path: Path) -> None:
    result = assert_optimizes(model_path, seeds=1)
    assert result.applied_by_pattern() == {"branches": 1}
    with pytest.raises(AssertionError, match=r"below 1000\.00x"):
        assert_optimizes(repvgg_model(), seeds=1, min_speedup=1000, runs=3, warmup=0)


def test_assert_optimizes_reports_why_nothing_folded() -> None:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6])
    c = g.conv(x, 4, 4, 3)
    model = g.model([c, g.bn(c, 4)])  # the conv's output is a graph output: no fold
    with pytest.raises(AssertionError) as e:
        assert_optimizes(model, seeds=1)
    assert "0 fold(s), expected at least 1" in str(e.value)
    assert "graph output" in str(e.value)
    assert assert_optimizes(model, min_folds=0, seeds=1).applied == []


def test_assert_optimizes_catches_a_wrong_fold(wrong_optimizer) -> None:
    with pytest.raises(AssertionError, match="beyond tolerance"):
        assert_optimizes(repvgg_model(), seeds=1)
