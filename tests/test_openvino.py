"""OpenVINO as the second runtime: ``--runtime openvino`` in compare, bench, check and optimize,
the reports naming it, and the one-line error when it is not installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrep.cli import EXIT_BAD_INPUT, EXIT_MISMATCH, EXIT_OK, EXIT_TOO_SLOW, main
from tests.helpers import perturbed
from tests.test_cli import repvgg_model

FAST = ["--runs", "3", "--warmup", "0", "--seeds", "1"]
OV = ["--runtime", "openvino"]


@pytest.fixture
def openvino() -> object:
    return pytest.importorskip(
        "openvino", reason='openvino is not installed (pip install "onnxrep[openvino]")'
    )


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(repvgg_model(), path)
    return path


@pytest.fixture
def optimized_path(model_path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "optimized.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "-q"]) == EXIT_OK
    return out


def dynamic_model() -> onnx.ModelProto:
    """Dynamic batch and spatial sizes, an int64 input, and outputs in an order that is not the
    order their nodes run in (one an Identity of another)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [2])
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
        helper.make_node("Identity", ["y"], ["y_copy"]),
        helper.make_node("Add", ["k", "k"], ["k2"]),
    ]
    outputs = [helper.make_tensor_value_info(n, t, None) for n, t in
               [("k2", TensorProto.INT64), ("y_copy", TensorProto.FLOAT),
                ("y", TensorProto.FLOAT)]]
    graph = helper.make_graph(nodes, "dynamic", [x, k], outputs, [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compare_in_openvino_exit_codes(openvino, model_path: Path, optimized_path: Path,
                                        tmp_path: Path, capsys) -> None:
    assert main(["compare", str(model_path), str(optimized_path), *OV]) == EXIT_OK
    out = capsys.readouterr().out
    assert "equivalent" in out and f"openvino {openvino.__version__.split('-')[0]}" in out
    assert "f32 inference precision, against onnxruntime" in out and "disable_all" in out

    bad = tmp_path / "perturbed.onnx"
    onnx.save(perturbed(onnx.load(model_path)), bad)
    assert main(["compare", str(model_path), str(bad), *OV, "--json"]) == EXIT_MISMATCH
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert data["runtime"]["name"] == "openvino" and data["runtime"]["precision"] == "f32"
    assert data["reference"]["name"] == "onnxruntime"
    assert data["reference"]["level"] == "disable_all"


def test_bench_in_openvino(openvino, model_path: Path, optimized_path: Path, capsys) -> None:
    assert main(["bench", str(model_path), str(optimized_path), *OV, "--runs", "3",
                 "--warmup", "0", "--threads", "2", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["runtime"]["name"] == "openvino" and data["runtime"]["device"] == "CPU"
    assert data["runtime"]["precision"] and data["level"] is None and data["threads"] == 2
    assert len(data["timings"]) == 2 and data["speedup"] > 0
    assert main(["bench", str(model_path), *OV, "--runs", "3", "--warmup", "0"]) == EXIT_OK
    assert "latency    openvino " in capsys.readouterr().out


def test_openvino_session_settings(openvino, model_path: Path) -> None:
    from onnxrep.verify import session

    compiled = session(model_path, runtime="openvino", threads=2,
                       precision="f32")._request.get_compiled_model()
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert compiled.get_property("NUM_STREAMS") == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32


def test_check_in_openvino_exit_codes(openvino, model_path: Path, tmp_path: Path,
                                      capsys) -> None:
    assert main(["check", str(model_path), *OV, *FAST]) == EXIT_OK
    out = capsys.readouterr().out
    assert "check passed" in out and "parity     ok" in out and "latency    openvino" in out
    page = tmp_path / "check.html"
    assert main(["check", str(model_path), *OV, *FAST, "--runs", "10", "--min-speedup", "1000",
                 "-q", "--report", str(page)]) == EXIT_TOO_SLOW
    assert "is below --min-speedup 1000x" in capsys.readouterr().err
    assert "openvino" in page.read_text(encoding="utf-8")


def test_check_in_openvino_mismatch_exits_1(openvino, model_path: Path, wrong_optimizer,
                                            capsys) -> None:
    assert main(["check", str(model_path), *OV, *FAST]) == EXIT_MISMATCH
    assert "outputs differ" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".json", ".md", ".html"])
def test_optimize_reports_name_the_runtime(openvino, model_path: Path, tmp_path: Path,
                                           suffix: str) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / f"report{suffix}"
    assert main(["optimize", str(model_path), "-o", str(out), "--verify", "--bench", *OV,
                 *FAST, "-q", "--report", str(report)]) == EXIT_OK
    text = report.read_text(encoding="utf-8")
    version = openvino.__version__.split("-")[0]
    if suffix == ".json":
        data = json.loads(text)
        assert data["parity"]["runtime"]["label"].startswith(f"openvino {version} CPU, f32")
        assert data["timing"]["runtime"]["name"] == "openvino"
    else:
        assert f"openvino {version} CPU, f32 inference precision, against onnxruntime" in text
        assert text.count(f"openvino {version}") >= 2  # parity and latency


def test_dynamic_inputs_same_feeds_and_output_order(openvino) -> None:
    from onnxrep.bench import benchmark
    from onnxrep.verify import compare, session

    model = dynamic_model()
    sess = session(model, runtime="openvino")
    assert [o.name for o in sess.get_outputs()] == ["k2", "y_copy", "y"]
    assert [(i.name, i.type) for i in sess.get_inputs()] == [
        ("x", "tensor(float)"), ("k", "tensor(int64)")]
    result = compare(model, model, runtime="openvino", shapes={"x": [2, 4, 9, 7]}, seeds=2)
    assert result.ok and result.inputs == {"x": [2, 4, 9, 7], "k": [2]}
    assert [o.name for o in result.outputs] == ["k2", "y_copy", "y"]
    assert result.outputs[0].max_abs == 0.0
    timing = benchmark(model, runtime="openvino", runs=2, warmup=0, shapes={"x": [1, 4, 8, 8]})
    assert timing.inputs == {"x": [1, 4, 8, 8], "k": [2]}


def test_external_data_model_in_openvino(openvino, tmp_path: Path) -> None:
    from onnxrep.verify import compare

    path = tmp_path / "external.onnx"
    onnx.save(repvgg_model(), path, save_as_external_data=True, location="external.data",
              size_threshold=0)
    assert compare(path, repvgg_model(), runtime="openvino", reference="openvino").ok


def test_missing_openvino_is_one_line_exit_2(model_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an import sees without it
    commands = [
        ["compare", str(model_path), str(model_path), *OV],
        ["compare", str(model_path), str(model_path), "--reference", "openvino"],
        ["bench", str(model_path), *OV],
        ["check", str(model_path), *OV],
        ["optimize", str(model_path), "-o", str(model_path.with_suffix(".out.onnx")),
         "--verify", *OV],
    ]
    for argv in commands:
        assert main(argv) == EXIT_BAD_INPUT, argv
        captured = capsys.readouterr()
        assert captured.err == ('onnxrep: error: openvino is not installed; install it with: '
                                'pip install "onnxrep[openvino]"\n'), argv
    assert not model_path.with_suffix(".out.onnx").exists()
    # without openvino, onnxruntime (the default) works as before
    assert main(["compare", str(model_path), str(model_path)]) == EXIT_OK


def test_a_model_openvino_cannot_read_is_one_line_naming_it(openvino: object, tmp_path: Path,
                                                            capsys) -> None:
    split = numpy_helper.from_array(np.array([1, 2]), "split")
    graph = helper.make_graph(
        [helper.make_node("SplitToSequence", ["x", "split"], ["sq"], axis=0)], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_sequence_value_info("sq", TensorProto.FLOAT, None)], [split])
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["compare", str(path), str(path), *OV, "--seeds", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"onnxrep: error: openvino cannot read {path}: ") and "\n" not in err
