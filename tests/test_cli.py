"""The command line: exit codes, what is written, what is printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest

from onnxrep.cli import main
from tests.builders import GraphBuilder, op_counts


def repvgg_model(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed=seed)
    x = g.input([1, 8, 12, 12], name="x")
    a = g.bn(g.conv(x, 8, 8, 3), 8)
    b = g.bn(g.conv(x, 8, 8, 1), 8)
    y = g.node("Relu", [g.node("Sum", [a, b, g.bn(x, 8)])])
    return g.model([g.node("GlobalAveragePool", [y])])


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(repvgg_model(), path)
    return path


def test_optimize_verify_bench_report(model_path: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    code = main([
        "optimize", str(model_path), "-o", str(out), "--verify", "--bench", "--runs", "5",
        "--warmup", "1", "--report", str(report), "--explain",
    ])
    assert code == 0
    assert op_counts(onnx.load(out)) == {"Conv": 1, "Relu": 1, "GlobalAveragePool": 1}
    data = json.loads(report.read_text())
    assert data["applied_by_pattern"] == {"branches": 1}
    assert data["parity"]["ok"] is True
    assert data["timing"]["speedup"] > 0
    text = capsys.readouterr().out
    assert "BatchNormalization     3 -> 0" in text and "speedup" in text and "parity     ok" in text


def test_compare_detects_a_one_percent_perturbation(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), "-o", str(out)]) == 0
    assert main(["compare", str(model_path), str(out)]) == 0
    model = onnx.load(model_path)
    for t in model.graph.initializer:
        if len(t.dims) == 4:
            values = onnx.numpy_helper.to_array(t) * 1.01
            t.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), t.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, bad)
    assert main(["compare", str(model_path), str(bad)]) == 1
    assert main(["compare", str(out), str(bad), "--json", "--seeds", "1"]) == 1


def test_verify_mismatch_exits_1_and_writes_nothing(model_path, tmp_path, monkeypatch) -> None:
    import onnxrep.pipeline as pipeline

    real = pipeline.optimize

    def wrong(model, **kwargs):  # a fold that is off by 1 %: what --verify must catch
        result = real(model, **kwargs)
        for t in result.model.graph.initializer:
            values = onnx.numpy_helper.to_array(t) * 1.01
            t.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), t.name))
        return result

    monkeypatch.setattr(pipeline, "optimize", wrong)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "--verify"]) == 1
    assert not out.exists()
    assert main(["optimize", str(model_path), "-o", str(out), "--verify",
                 "--keep-on-mismatch"]) == 1
    assert out.exists()


def test_output_equal_to_input_needs_in_place(model_path: Path, capsys) -> None:
    before = model_path.read_bytes()
    assert main(["optimize", str(model_path), "-o", str(model_path)]) == 2
    assert "--in-place" in capsys.readouterr().err
    assert model_path.read_bytes() == before
    assert main(["optimize", str(model_path), "--in-place"]) == 0
    assert op_counts(onnx.load(model_path))["Conv"] == 1


def test_bench_one_and_two_models(model_path: Path, capsys) -> None:
    assert main(["bench", str(model_path), "--runs", "3", "--warmup", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["timings"]) == 1 and data["speedup"] is None
    assert main(["bench", str(model_path), str(model_path), "--runs", "3"]) == 0
    assert "speedup" in capsys.readouterr().out


def test_usage_errors_exit_2(model_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["optimize", str(model_path), "--skip", "nonsense", "-o", "x.onnx"])
    assert e.value.code == 2
    assert main(["compare", str(model_path), str(model_path), "--shape", "x:1by3"]) == 2
    assert main(["compare", str(model_path), str(model_path), "--shape", "nope:1x8x12x12"]) == 2


def test_python_dash_m_and_console_script(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "onnxrep", "optimize", str(model_path), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "folds      1 (branches 1)" in run.stdout


@pytest.mark.parametrize("content", [b"PK\x03\x04 not a zip archive", b"", b"\x93NUMPY"])
def test_unreadable_inputs_file_is_one_line_naming_it(model_path: Path, tmp_path: Path,
                                                      content: bytes, capsys) -> None:
    npz = tmp_path / "inputs.npz"
    npz.write_bytes(content)
    assert main(["compare", str(model_path), str(model_path), "--inputs", str(npz)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"onnxrep: error: {npz}: cannot read inputs") and "\n" not in err


def test_a_npy_array_is_not_an_inputs_file(model_path: Path, tmp_path: Path, capsys) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 8, 12, 12), np.float32))
    assert main(["compare", str(model_path), str(model_path), "--inputs", str(npy)]) == 2
    assert "not an .npz archive" in capsys.readouterr().err


def _noisy_models(folder: Path) -> list[Path]:
    """Models whose optimization makes the libraries warn: NaN, Inf and negative BN parameters
    (numpy's RuntimeWarning), and a bfloat16 model (onnx-graphsurgeon's logger, which prints
    to stdout)."""
    g = GraphBuilder(seed=0)
    x = g.input([1, 4, 6, 6], name="x")
    model = g.model([g.node("Relu", [g.bn(g.conv(x, 4, 4, 3), 4)])])
    for t in model.graph.initializer[-4:]:
        values = onnx.numpy_helper.to_array(t).copy()
        values[:3] = [np.nan, np.inf, -1.0]
        t.CopyFrom(onnx.numpy_helper.from_array(values, t.name))
    g = GraphBuilder(dtype=ml_dtypes.bfloat16, seed=0, opset=22)
    x = g.input([1, 4, 6, 6], name="x")
    bf16 = g.model([g.node("Relu", [g.bn(g.conv(x, 4, 4, 3), 4)])])
    paths = [folder / "nan-bn.onnx", folder / "bf16.onnx"]
    for m, path in zip((model, bf16), paths, strict=True):
        onnx.save(m, path)
    return paths


def test_quiet_is_silent_and_library_warnings_are_counted(tmp_path: Path) -> None:
    """Under -q nothing reaches stdout or stderr; by default the summary counts the library
    warnings (none reaches stderr or stdout as the library wrote it); -v lists them."""
    for src in _noisy_models(tmp_path):
        out = tmp_path / "out.onnx"
        runs = {}
        for flag in ("-q", None, "-v"):
            argv = [sys.executable, "-m", "onnxrep", "optimize", str(src), "-o", str(out),
                    "--verify", *([flag] if flag else [])]
            runs[flag] = subprocess.run(argv, capture_output=True, text=True, check=False)
            assert runs[flag].returncode == 0, runs[flag].stderr
        assert (runs["-q"].stdout, runs["-q"].stderr) == ("", "")
        for run in runs.values():
            assert "[W]" not in run.stdout and "Warning:" not in run.stderr
        default, verbose = runs[None].stdout, runs["-v"].stdout
        assert "library warning(s) (-v lists them)" in default
        listed = "RuntimeWarning: invalid value" if src.name == "nan-bn.onnx" else (
            "onnx-graphsurgeon: Could not convert: BFLOAT16")
        assert listed in verbose and listed not in default


@pytest.mark.parametrize("argv", [
    ["nope"], [], ["check", "m.onnx", "--min-speedup", "abc"],
    ["check", "m.onnx", "--min-speedup", "inf"], ["compare", "a.onnx", "b.onnx", "--atol", "nan"],
    ["compare", "a.onnx", "b.onnx", "--rtol", "-1"], ["bench", "m.onnx", "--runs", "x"],
])
def test_usage_errors_are_one_line(argv: list[str], capsys) -> None:
    """A usage error reads like every other error: one line, exit 2; tolerances and bars
    must be finite (and tolerances not negative), or every comparison fails."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxrep: error: onnxrep"), err
    assert "--help" in err[0]


@pytest.mark.parametrize(("flag", "value"), [("-o", "."), ("-o", "newdir/"), ("-o", ""),
                                             ("--report", ""), ("--report", "sub/")])
def test_an_output_that_names_no_file_is_refused(model_path: Path, tmp_path: Path, capsys,
                                                 flag: str, value: str) -> None:
    """'.', a path ending in a separator (which a Path drops: -o newdir/ wrote a file named
    newdir) or an empty name (--report '' was ignored) name no file to write."""
    value = value.replace("newdir/", f"{tmp_path}/newdir/").replace("sub/", f"{tmp_path}/sub/")
    argv = ["optimize", str(model_path), "-o", str(tmp_path / "out.onnx")]
    argv = [*argv[:2], flag, value] if flag == "-o" else [*argv, flag, value]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a file name" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_string_outputs_are_compared_for_equality(tmp_path: Path, capsys) -> None:
    """A model with a string output (onnxruntime runs it) verifies: strings are equal or
    not, they have no distance."""
    g = GraphBuilder(seed=0)
    x = g.input([1, 2, 4, 4], name="x")
    model = g.model([g.bn(g.conv(x, 2, 2, 3), 2)])
    words = onnx.helper.make_tensor("words", onnx.TensorProto.STRING, [2], [b"a", b"b"])
    model.graph.initializer.append(words)
    model.graph.node.append(onnx.helper.make_node("Identity", ["words"], ["labels"]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.STRING, [2]))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["compare", str(path), str(path)]) == 0
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--verify"]) == 0
    assert "labels" in capsys.readouterr().out


def test_external_data_without_a_length_reads_what_the_shape_takes(tmp_path: Path) -> None:
    """An external tensor without 'length' (onnxruntime reads the bytes its shape takes;
    onnx's loader would read the rest of the file too, and then the tensor fits no shape)."""
    g = GraphBuilder(seed=0)
    x = g.input([1, 2, 4, 4], name="x")
    model = g.model([g.bn(g.conv(x, 2, 2, 3), 2)])
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    raw = weight.raw_data
    (tmp_path / "w.bin").write_bytes(raw + b"\0" * 64)  # more than the tensor in the file
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w.bin")
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    assert main(["optimize", str(src), "-o", str(out), "--verify", "-q"]) == 0
    assert op_counts(onnx.load(out)) == {"Conv": 1}


def test_an_initializer_whose_data_does_not_fit_its_shape_is_named(tmp_path: Path,
                                                                   capsys) -> None:
    g = GraphBuilder(seed=0)
    x = g.input([1, 2, 4, 4], name="x")
    model = g.model([g.bn(g.conv(x, 2, 2, 3), 2)])
    bias = next(t for t in model.graph.initializer if t.name.endswith("bias") or
                len(t.dims) == 1)
    bias.raw_data = bias.raw_data + b"\0" * 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"initializer {bias.name!r} does not hold the data" in err[0], err


@pytest.mark.parametrize("name", ["out.json", "out.onnxtxt", "out.textproto"])
def test_an_output_named_for_a_text_format_is_refused(model_path: Path, tmp_path: Path,
                                                      capsys, name: str) -> None:
    """Text formats are read, but the output is binary: under such a name neither onnx nor
    onnxrep could read it back."""
    assert main(["optimize", str(model_path), "-o", str(tmp_path / name)]) == 2
    assert "written as binary ONNX" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


# -- outputs and inputs of every kind, failures in one line ----------------------------------


def _save(tmp_path: Path, name: str, nodes: list[onnx.NodeProto],
          inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          inits: list[onnx.TensorProto] = (), ml: bool = False) -> Path:
    opsets = [onnx.helper.make_opsetid("", 17)] + (
        [onnx.helper.make_opsetid("ai.onnx.ml", 3)] if ml else [])
    graph = onnx.helper.make_graph(nodes, name, inputs, outputs, list(inits))
    path = tmp_path / f"{name}.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=opsets), path)
    return path


F = onnx.TensorProto.FLOAT


def test_a_failed_run_is_one_line_without_onnxruntime_s_own_log(tmp_path: Path, capfd) -> None:
    shape = onnx.numpy_helper.from_array(np.array([5, 5]), "s")
    path = _save(tmp_path, "bad_reshape", [onnx.helper.make_node("Reshape", ["x", "s"], ["y"])],
                 [onnx.helper.make_tensor_value_info("x", F, [2, 3])],
                 [onnx.helper.make_tensor_value_info("y", F, None)], [shape])
    assert main(["compare", str(path), str(path)]) == 2
    assert main(["bench", str(path), "--runs", "1", "--warmup", "0"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("onnxrep: error: ") for line in err), err
    assert err[1].startswith("onnxrep: error: bad_reshape.onnx: onnxruntime failed to run")


def test_a_named_dynamic_dimension_has_one_size_in_every_input(tmp_path: Path) -> None:
    path = _save(tmp_path, "shared_dim", [onnx.helper.make_node("MatMul", ["y", "x"], ["z"])],
                 [onnx.helper.make_tensor_value_info("x", F, ["N", 4]),
                  onnx.helper.make_tensor_value_info("y", F, [4, "N"])],
                 [onnx.helper.make_tensor_value_info("z", F, None)])
    assert main(["compare", str(path), str(path), "--seeds", "1"]) == 0
    # a size given for one input binds the name in the others
    assert main(["compare", str(path), str(path), "--shape", "y:4x7", "--seeds", "1"]) == 0


def test_sequence_outputs_of_tensors_of_different_shapes(tmp_path: Path) -> None:
    split = onnx.numpy_helper.from_array(np.array([1, 2]), "split")
    path = _save(tmp_path, "ragged", [onnx.helper.make_node("SplitToSequence", ["x", "split"],
                                                            ["sq"], axis=0)],
                 [onnx.helper.make_tensor_value_info("x", F, [3, 2])],
                 [onnx.helper.make_tensor_sequence_value_info("sq", F, None)], [split])
    assert main(["compare", str(path), str(path), "--seeds", "1"]) == 0


def test_map_outputs_are_compared_as_the_numbers_they_hold(tmp_path: Path) -> None:
    """A ZipMap's probabilities are float32 values: a change in their last bit passes, one of
    1 % does not (they were compared as opaque objects, and every fold failed)."""
    def classifier(scale: float) -> Path:
        w = onnx.numpy_helper.from_array(np.array([[1.0, -2.0, 0.5]], np.float32) * scale, "w")
        nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["logits"]),
                 onnx.helper.make_node("Softmax", ["logits"], ["p"], axis=1),
                 onnx.helper.make_node("ZipMap", ["p"], ["z"], domain="ai.onnx.ml",
                                       classlabels_int64s=[0, 1, 2])]
        z = onnx.helper.make_tensor_sequence_value_info("z", F, None)
        z.type.sequence_type.elem_type.CopyFrom(onnx.helper.make_map_type_proto(
            onnx.TensorProto.INT64, onnx.helper.make_tensor_type_proto(F, None)))
        return _save(tmp_path, f"zipmap{scale}", nodes,
                     [onnx.helper.make_tensor_value_info("x", F, [1, 1])], [z], [w], ml=True)

    a = classifier(1.0)
    assert main(["compare", str(a), str(classifier(1.0 + 2**-23)), "--seeds", "3"]) == 0
    assert main(["compare", str(a), str(classifier(1.01)), "--seeds", "3"]) == 1


def test_json_is_strict_and_the_cosine_of_huge_outputs_is_1(tmp_path: Path, capsys) -> None:
    def scaled(name: str, shape: list[int], value: float) -> Path:
        c = onnx.numpy_helper.from_array(np.full(shape, value), "c")
        return _save(tmp_path, name, [onnx.helper.make_node("Mul", ["x", "c"], ["y"])],
                     [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, shape)],
                     [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
                     [c])

    huge = scaled("huge", [4], 1e200)
    assert main(["compare", str(huge), str(huge), "--json", "--seeds", "1"]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    assert data["outputs"][0]["cosine"] == pytest.approx(1.0)
    # outputs of different shapes: an infinite difference, written null
    other = scaled("other", [1], 1.0)
    assert main(["compare", str(scaled("four", [4], 1.0)), str(other), "--json",
                 "--seeds", "1"]) == 2  # different inputs: refused
    wide = _save(tmp_path, "wide", [onnx.helper.make_node("Tile", ["x", "r"], ["y"])],
                 [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [4])],
                 [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
                 [onnx.numpy_helper.from_array(np.array([2]), "r")])
    capsys.readouterr()
    assert main(["compare", str(huge), str(wide), "--json", "--seeds", "1"]) == 1
    data = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    assert data["outputs"][0]["max_abs"] is None and not data["ok"]


def test_too_few_runs_give_no_interval_and_check_asks_for_more(model_path: Path,
                                                               capsys) -> None:
    assert main(["bench", str(model_path), str(model_path), "--runs", "1", "--warmup", "0",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["speedup_low"] is None and data["faster"] is None
    assert main(["check", str(model_path), "--runs", "5", "--min-speedup", "0.001"]) == 0
    capsys.readouterr()
    report = model_path.with_name("r.json")
    assert main(["check", str(model_path), "--runs", "9", "--min-speedup", "1",
                 "--report", str(report)]) == 2
    captured = capsys.readouterr()  # refused before any work: nothing printed or written
    assert "--runs 10 or more" in captured.err and not captured.out and not report.exists()


def test_an_inputs_file_with_an_array_for_no_input_is_refused_everywhere(
    model_path: Path, tmp_path: Path, capsys,
) -> None:
    inputs = tmp_path / "in.npz"
    x = np.zeros((1, 8, 12, 12), np.float32)
    np.savez(inputs, x=x, extra=x)
    fast = ["--runs", "1", "--warmup", "0"]
    for args in (["compare", str(model_path), str(model_path)],
                 ["bench", str(model_path), *fast], ["check", str(model_path), *fast]):
        assert main([*args, "--inputs", str(inputs)]) == 2
        assert "arrays ['extra'] that the model has no input for" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(model_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxrep", "bench", str(model_path), "--runs", "2000",
         "--warmup", "0", "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # the reader goes away before the first line
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141 and b"Traceback" not in err and b"error" not in err


def test_an_unwritable_report_is_refused_before_any_work(model_path: Path, capsys) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, a folder no file can be made in")
    assert main(["check", str(model_path), "--report", "/proc/report.json"]) == 2
    captured = capsys.readouterr()
    assert "cannot write the report there" in captured.err and not captured.out


def test_an_error_with_no_reader_left_still_exits_2(tmp_path: Path) -> None:
    """stdout and stderr into one pipe whose reader is gone: the error cannot be said, the
    exit code still says it (it was 1, "outputs differ", from the failed print)."""
    import os

    read, write = os.pipe()
    os.close(read)
    missing = str(tmp_path / "missing.onnx")
    process = subprocess.run([sys.executable, "-m", "onnxrep", "compare", missing, missing],
                             stdout=write, stderr=write, timeout=120, check=False)
    os.close(write)
    assert process.returncode == 2


def test_shape_may_not_give_a_named_dimension_two_sizes(tmp_path: Path, capsys) -> None:
    path = _save(tmp_path, "shared_dim2", [onnx.helper.make_node("MatMul", ["y", "x"], ["z"])],
                 [onnx.helper.make_tensor_value_info("x", F, ["N", 4]),
                  onnx.helper.make_tensor_value_info("y", F, [4, "N"])],
                 [onnx.helper.make_tensor_value_info("z", F, None)])
    assert main(["compare", str(path), str(path), "--shape", "x:3x4", "--shape", "y:4x5"]) == 2
    assert "gives the dimension 'N' two sizes (3 and 5)" in capsys.readouterr().err


def test_outputs_of_different_kinds_say_so() -> None:
    from onnxrep.verify import _diff_value

    x = np.zeros(3, np.float32)
    assert _diff_value("m", {1: 0.5}, [x], None, None).note == (
        "a map against another kind of output")
    assert _diff_value("s", [x], x, None, None).note == "a sequence against a tensor"
    assert _diff_value("s", [x], [x, x], None, None).note == "sequences of 1 and 2 elements"
    same = _diff_value("m", [{1: 0.5, 2: 0.25}], [{1: 0.5, 2: 0.25}], None, None,
                       np.dtype(np.float32))
    assert same.ok and same.shape == [1, 2] and same.dtype == "float32"


def test_input_options_that_cannot_work_are_refused_before_any_work(
    model_path: Path, tmp_path: Path, capsys, monkeypatch,
) -> None:
    import onnxrep.pipeline

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("optimized before refusing")

    monkeypatch.setattr(onnxrep.pipeline, "optimize", no_work)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros((1, 8, 12, 12), np.float32))
    out = tmp_path / "out.onnx"
    for args, said in (
        (["optimize", str(model_path), "-o", str(out), "--verify", "--seeds", "0"],
         "--seeds must be at least 1"),
        (["compare", str(model_path), str(model_path), "--inputs", str(inputs), "--shape",
          "x:1x8x12x12"], "--shape and --inputs"),
        (["bench", str(model_path), "--shape", "x:1xa"], "bad --shape"),
    ):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert said in captured.err, captured.err
    assert not out.exists()
