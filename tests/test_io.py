"""Bad input through the command line, and atomic writes: what is printed, what is left behind.

Every bad model gets one line on stderr naming the problem and the file, exit code 2, no
traceback, and nothing in the output folder (no output, no temporary file). A failure while
saving leaves no partial file, no temporary file, and an existing output as it was.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper

import onnxrep
from onnxrep import io
from onnxrep.cli import main
from onnxrep.errors import OnnxrepError
from tests.builders import GraphBuilder


def small_model() -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input([1, 4, 6, 6], name="x")
    return g.model([g.node("Relu", [g.bn(g.conv(x, 4, 4, 3), 4)])])


def big_weight_model() -> onnx.ModelProto:
    """A model with weights above io.EXTERNAL_THRESHOLD, so external saves move them."""
    g = GraphBuilder()
    x = g.input([1, 16, 6, 6], name="x")
    return g.model([g.bn(g.conv(x, 16, 16, 3), 16)])


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _checker_fails(m: onnx.ModelProto) -> None:
    m.graph.node[0].input[0] = "undefined_tensor"


def _opset(version: int) -> Callable[[onnx.ModelProto], None]:
    def edit(m: onnx.ModelProto) -> None:
        m.opset_import[0].version = version

    return edit


def _ir(version: int) -> Callable[[onnx.ModelProto], None]:
    def edit(m: onnx.ModelProto) -> None:
        m.ir_version = version

    return edit


def _foreign_domain(m: onnx.ModelProto) -> None:
    m.graph.node[0].domain = "com.example"


def _foreign_domain_in_subgraph(m: onnx.ModelProto) -> None:
    out = helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [1])
    body = helper.make_graph([helper.make_node("Foo", [], ["t"], domain="com.example")], "b", [],
                             [out])
    other = helper.make_graph([helper.make_node("Foo", [], ["t"], domain="com.example")], "c", [],
                              [out])
    m.graph.input.append(helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    m.graph.node.append(helper.make_node("If", ["cond"], ["branch"], then_branch=body,
                                         else_branch=other))
    m.graph.output.append(helper.make_tensor_value_info("branch", onnx.TensorProto.FLOAT, [1]))


def _short_weight(m: onnx.ModelProto) -> None:
    t = m.graph.initializer[0]
    t.raw_data = t.raw_data[:10]


def _no_graph(m: onnx.ModelProto) -> None:
    m.ClearField("graph")


MODEL_EDITS: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    # case → (edit of a valid model, text the error must contain)
    "fails-checker": (_checker_fails, "fails onnx.checker: Nodes in a graph must be"),
    "opset-too-new": (_opset(onnx.defs.onnx_opset_version() + 1), "outside the supported range"),
    "opset-too-old": (_opset(io.MIN_OPSET - 1), "outside the supported range"),
    "ir-too-new": (_ir(onnx.IR_VERSION + 1), "is newer than this onnx supports"),
    "ir-too-old": (_ir(2), "is too old"),
    "foreign-domain": (_foreign_domain, "domain(s) ['com.example'] that the model does not"),
    "foreign-domain-in-subgraph": (_foreign_domain_in_subgraph, "domain(s) ['com.example']"),
    "short-weight": (_short_weight, "raw_data size (10 bytes) is too small"),
    "no-graph": (_no_graph, "not an ONNX model"),
}


def _bad_bytes(kind: str) -> bytes:
    blob = small_model().SerializeToString()
    return {
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "truncated": blob[: len(blob) // 2],
        "text": b"this is a text file, not a model\n",
        "tensor-proto": onnx.numpy_helper.from_array(np.ones(9, np.float32)).SerializeToString(),
    }[kind]


BYTE_CASES = {
    "empty": "file is empty",
    "random": "not an ONNX model (cannot parse",
    "truncated": "not an ONNX model (cannot parse",
    "text": "is a text file, not an ONNX model",
    "tensor-proto": "not an ONNX model",
}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.onnx"
    onnx.save(small_model(), path)
    return path


def _make_bad(tmp_path: Path, case: str) -> tuple[Path, str]:
    """The bad input of ``case`` and the text its error must contain."""
    if case == "missing":
        return tmp_path / "missing.onnx", "no such file"
    if case == "directory":
        d = tmp_path / "folder.onnx"
        d.mkdir()
        return d, "is a directory"
    path = tmp_path / f"{case}.onnx"
    if case in BYTE_CASES:
        path.write_bytes(_bad_bytes(case))
        return path, BYTE_CASES[case]
    edit, text = MODEL_EDITS[case]
    model = small_model()
    edit(model)
    path.write_bytes(model.SerializeToString())
    return path, text


CASES = ["missing", "directory", *BYTE_CASES, *MODEL_EDITS]


def _assert_one_line_error(err: str, path: Path, text: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("onnxrep: error: "), err
    assert str(path) in lines[0], err
    assert text in lines[0], err
    assert "Traceback" not in err


def _folder_is_empty(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize("case", CASES)
def test_optimize_refuses_bad_input(case: str, tmp_path: Path, capsys) -> None:
    bad, text = _make_bad(tmp_path, case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result.onnx"
    assert main(["optimize", str(bad), "-o", str(out), "--verify"]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, bad, text)
    assert captured.out == ""
    _folder_is_empty(out_dir)


@pytest.mark.parametrize("case", CASES)
def test_compare_bench_and_check_refuse_bad_input(case: str, good: Path, tmp_path: Path,
                                            capsys) -> None:
    bad, text = _make_bad(tmp_path, case)
    # compare and bench leave the checker to onnxruntime, which says it in its own words
    ort_text = {
        "fails-checker": "Node input 'undefined_tensor' is not a graph input",
        "short-weight": "raw_data size (10 bytes)",
    }.get(case, text)
    for argv in (
        ["compare", str(good), str(bad)],
        ["compare", str(bad), str(good)],
        ["bench", str(bad), "--runs", "1", "--warmup", "0"],
        ["bench", str(good), str(bad), "--runs", "1", "--warmup", "0"],
        ["check", str(bad), "--runs", "1", "--warmup", "0"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        _assert_one_line_error(err, bad, text if text in err else ort_text)


def test_external_data_problems_name_the_model(tmp_path: Path, capsys) -> None:
    model = big_weight_model()
    cases = {}
    missing = tmp_path / "missing_data.onnx"
    io.save(model, missing, external=True)
    os.unlink(tmp_path / "missing_data.onnx.data")
    cases[missing] = "cannot read its external data"
    short = tmp_path / "short_data.onnx"
    io.save(model, short, external=True)
    with open(tmp_path / "short_data.onnx.data", "r+b") as f:
        f.truncate(100)
    cases[short] = "cannot read its external data"
    for location in ("../outside.data", "/etc/hostname"):
        m = _copy(model)
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        onnx.external_data_helper.set_external_data(t, location, offset=0, length=64)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        path = tmp_path / f"escape{len(cases)}.onnx"
        onnx.save(m, path)
        cases[path] = "cannot read its external data"
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    for path, text in cases.items():
        assert main(["optimize", str(path), "-o", str(out)]) == 2
        _assert_one_line_error(capsys.readouterr().err, path, text)
    _folder_is_empty(out.parent)


@pytest.mark.parametrize("suffix", [".json", ".textproto", ".onnxtxt", ".txt"])
def test_text_files_with_a_text_format_suffix(suffix: str, tmp_path: Path, capsys) -> None:
    """onnx picks a text parser by suffix; its ParseError and warnings must not leak."""
    path = tmp_path / f"model{suffix}"
    path.write_text("hello world\n")
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx")]) == 2
    _assert_one_line_error(capsys.readouterr().err, path, "is a text file")
    assert not (tmp_path / "o.onnx").exists()


def test_not_a_regular_file(tmp_path: Path, capsys) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    assert main(["optimize", "/dev/zero", "-o", str(tmp_path / "o.onnx")]) == 2
    _assert_one_line_error(capsys.readouterr().err, Path("/dev/zero"), "not a regular file")


def test_every_prefix_of_a_model_is_refused_cleanly(tmp_path: Path) -> None:
    """Truncation at any byte: an OnnxrepError (or, at a field boundary, a valid model)."""
    blob = small_model().SerializeToString()
    path = tmp_path / "t.onnx"
    outcomes = set()
    for n in range(1, len(blob), 7):
        path.write_bytes(blob[:n])
        try:
            io.load(path)
            outcomes.add("loaded")
        except OnnxrepError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_no_traceback_from_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "random.onnx"
    bad.write_bytes(_bad_bytes("random"))
    out = tmp_path / "o.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "onnxrep", "optimize", str(bad), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 2
    _assert_one_line_error(run.stderr, bad, "not an ONNX model")
    assert run.stdout == "" and not out.exists()


# --------------------------------------------------------------------------------------------
# output paths


def test_output_equal_to_input_in_any_spelling_needs_in_place(good: Path, tmp_path: Path,
                                                              capsys, monkeypatch) -> None:
    before = good.read_bytes()
    link = tmp_path / "link.onnx"
    link.symlink_to(good)
    hard = tmp_path / "hard.onnx"
    os.link(good, hard)
    monkeypatch.chdir(tmp_path)
    for src, dst in ((good, "good.onnx"), ("./good.onnx", str(good)), (link, good),
                     (good, link), (hard, good)):
        assert main(["optimize", str(src), "-o", str(dst)]) == 2
        err = capsys.readouterr().err
        assert "--in-place" in err and len(err.strip().splitlines()) == 1
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx", "hard.onnx", "link.onnx"]


def test_output_into_a_directory_or_missing_folder(good: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["optimize", str(good), "-o", str(folder)]) == 2
    _assert_one_line_error(capsys.readouterr().err, folder, "is a directory")
    _folder_is_empty(folder)
    target = tmp_path / "nowhere" / "o.onnx"
    assert main(["optimize", str(good), "-o", str(target)]) == 2
    _assert_one_line_error(capsys.readouterr().err, target.parent, "no such directory")
    assert not target.parent.exists()


def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
        return
    try:  # the device numbers of /dev/null
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("mknod is not permitted here")


@pytest.mark.parametrize("kind", ["fifo", "character-device"])
@pytest.mark.parametrize("role", ["output", "link-to-output", "data-file", "report"])
def test_an_output_onto_a_fifo_or_character_device_is_refused(kind: str, role: str, good: Path,
                                                              tmp_path: Path, capsys) -> None:
    """An existing output that is not a regular file is never replaced (as root, ``-o
    /dev/null`` once replaced the system's /dev/null with a regular file)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, report = out_dir / "o.onnx", out_dir / "r.json"
    special = {"output": out, "link-to-output": out_dir / "dev", "data-file":
               out_dir / "o.onnx.data", "report": report}[role]
    _special(kind, special)
    if role == "link-to-output":
        out.symlink_to(special)
    before = sorted(p.name for p in out_dir.iterdir())
    assert main(["optimize", str(good), "-o", str(out), "--report", str(report)]) == 2
    what = "a FIFO" if kind == "fifo" else "a character device"
    err = capsys.readouterr().err
    assert f"is {what}, not a regular file; not replacing it" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == before
    is_kind = stat.S_ISFIFO if kind == "fifo" else stat.S_ISCHR
    assert is_kind(os.lstat(special).st_mode)
    with pytest.raises(OnnxrepError, match=f"is {what}"):  # the API refuses it too
        if role == "report":
            io.refuse_special(report)  # what StagedReport does first
        else:
            io.save(big_weight_model(), out, external=role == "data-file")


def test_a_symlink_to_a_regular_output_is_replaced_as_a_link(good: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.onnx"
    target.write_bytes(b"previous contents")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    assert main(["optimize", str(good), "-o", str(link), "-q"]) == 0
    assert not link.is_symlink() and io.load(link)
    assert target.read_bytes() == b"previous contents"


def _external_input(tmp_path: Path, location: str = "") -> tuple[Path, Path]:
    """A model whose weights are in an external data file (``location``, by default the one
    io.save names); returns the model and its data file."""
    src = tmp_path / "in.onnx"
    io.save(big_weight_model(), src, external=True)
    data = tmp_path / "in.onnx.data"
    if location:
        model = onnx.load(src, load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        data = data.rename(tmp_path / location)
        src.write_bytes(model.SerializeToString())
    return src, data


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("case", [
    "output-is-the-data-file", "output-is-a-link-to-the-data-file",
    "output-data-file-is-the-data-file", "report-is-the-data-file", "report-is-the-input",
    "report-is-the-output", "report-is-the-output-data-file", "report-is-a-link-to-the-output",
])
def test_no_output_is_an_input_or_another_output(case: str, tmp_path: Path, capsys) -> None:
    """Compared by device and inode, not by name. Once, ``-o`` onto the input's own data file
    exited 0 and left the input model computing garbage."""
    src, data = _external_input(tmp_path, "weights.onnx.data")
    alias = tmp_path / "alias.onnx"  # not a hard link: onnx refuses to read data that has one
    alias.symlink_to(data)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    out.write_bytes(b"previous output")
    links = {  # a report must end in .json, .md or .html: other files are reached by links
        "data.json": data, "in.json": src, "out.json": out, "out-data.json": tmp_path /
        "o.onnx.data",  # a dangling link: compared by the path it resolves to
    }
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    out, report = {
        "output-is-the-data-file": (data, report),
        "output-is-a-link-to-the-data-file": (alias, report),
        "output-data-file-is-the-data-file": (tmp_path / "weights.onnx", report),
        "report-is-the-data-file": (out, tmp_path / "data.json"),
        "report-is-the-input": (out, tmp_path / "in.json"),
        "report-is-the-output": (tmp_path / "o.html", tmp_path / "o.html"),
        "report-is-the-output-data-file": (out, tmp_path / "out-data.json"),
        "report-is-a-link-to-the-output": (out, tmp_path / "out.json"),
    }[case]
    before = _snapshot(tmp_path)
    argv = ["optimize", str(src), "-o", str(out), "--report", str(report)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxrep: error: ") and len(err.strip().splitlines()) == 1, err
    assert "would" in err
    assert _snapshot(tmp_path) == before
    assert _same_weights(io.load(src), big_weight_model())


def test_check_report_onto_the_input_or_its_data_is_refused(tmp_path: Path, capsys) -> None:
    src, data = _external_input(tmp_path, "weights.json")  # a report format's extension
    (tmp_path / "in.json").symlink_to(src)
    before = _snapshot(tmp_path)
    for report in (tmp_path / "in.json", data):
        assert main(["check", str(src), "--report", str(report), "--runs", "1",
                     "--warmup", "0"]) == 2
        assert "the report would overwrite the input" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_in_place_may_replace_the_input_and_its_own_data_file(tmp_path: Path) -> None:
    """The whole input is in memory before either file is renamed over."""
    src, _ = _external_input(tmp_path)
    assert main(["optimize", str(src), "--in-place", "-q"]) == 0
    assert main(["compare", str(src), str(src), "-q"]) == 0
    onnx.checker.check_model(str(src))


def test_failed_report_leaves_no_output(good: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    code = main(["optimize", str(good), "-o", str(out), "--report",
                 str(tmp_path / "nowhere" / "r.json")])
    assert code == 2
    assert not out.exists()


def test_bad_inputs_file_names_the_file(good: Path, tmp_path: Path, capsys) -> None:
    npz = tmp_path / "inputs.npz"
    npz.write_bytes(b"PK\x03\x04 not a zip archive")
    assert main(["compare", str(good), str(good), "--inputs", str(npz)]) == 2
    _assert_one_line_error(capsys.readouterr().err, npz, "cannot read inputs")


# --------------------------------------------------------------------------------------------
# atomic writes


def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _existing_output(tmp_path: Path) -> tuple[Path, bytes]:
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous contents")
    return out, out.read_bytes()


def test_failing_serializer_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    """Serialization fails half-way (protobuf refuses a message past 2 GB): the old output
    stays, no temporary file or data file is left, with and without external data."""
    real = io.serialize_chunks

    def failing(model: onnx.ModelProto):
        chunks = real(model)
        yield next(chunks)
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(io, "serialize_chunks", failing)
    for external in (False, True):
        out, before = _existing_output(tmp_path)
        with pytest.raises(OnnxrepError, match=r"out.onnx: cannot write .*2GB"):
            io.save(big_weight_model(), out, external=external)
        assert out.read_bytes() == before
        assert _leftovers(tmp_path, "out.onnx") == []


@pytest.mark.parametrize("external", [False, True])
def test_failing_rename_leaves_the_old_output(tmp_path: Path, monkeypatch, external) -> None:
    out, before = _existing_output(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", refuse)
    with pytest.raises(OnnxrepError, match=r"out.onnx: cannot write \(No space left on device\)"):
        io.save(big_weight_model(), out, external=external)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert _leftovers(tmp_path, "out.onnx") == []


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_leaves_no_temp(tmp_path: Path, monkeypatch, error) -> None:
    out, before = _existing_output(tmp_path)

    real = io.serialize_chunks

    def fail(model: onnx.ModelProto):  # the first chunk is written, then the error
        chunks = real(model)
        yield next(chunks)
        raise error

    monkeypatch.setattr(io, "serialize_chunks", fail)
    with pytest.raises(OnnxrepError if isinstance(error, OSError) else KeyboardInterrupt):
        io.save(big_weight_model(), out, external=True)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert _leftovers(tmp_path, "out.onnx") == []


def _large_model(path: Path) -> None:
    """Conv (1024 x 1024 x 5 x 5 float32 weights: 105 MB) → BN, saved in one file."""
    rng = np.random.default_rng(0)
    c, k = 1024, 5
    weights = [numpy_helper.from_array(rng.standard_normal((c, c, k, k), np.float32), "w")]
    weights += [numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), name)
                for name in ("gamma", "beta", "mean", "var")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[2] * 4),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"])]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", f, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", f, [1, c, 4, 4])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_while_writing_a_large_model_leaves_nothing(signum: int, tmp_path: Path) -> None:
    """CI time-outs and container stops send SIGTERM: handled as Ctrl-C is, with no temporary
    file of the output's size left beside it, no partial output, exit 128 + signal."""
    src = tmp_path / "large.onnx"
    _large_model(src)
    assert src.stat().st_size >= 100 * 2**20
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.onnx"
    for _ in range(5):  # the write may end before the signal lands: then run again
        process = subprocess.Popen(
            [sys.executable, "-m", "onnxrep", "optimize", str(src), "-o", str(out), "-q",
             "--no-audit"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while process.poll() is None and not any(p.suffix == ".tmp" for p in out_dir.iterdir()):
            time.sleep(0.001)
        if process.poll() is None:
            process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        if out.exists():  # the write was over before the signal arrived: run again
            assert process.returncode in (0, 128 + signum, -signum), err
            assert _leftovers(out_dir, "o.onnx") == []
            out.unlink()
            continue
        assert process.returncode == 128 + signum, err
        assert err == f"onnxrep: terminated by {signal.Signals(signum).name}\n"
        assert _leftovers(out_dir) == []
        return
    pytest.fail("every write ended before the signal arrived")


def test_failed_model_rename_restores_the_previous_data_file(tmp_path: Path,
                                                            monkeypatch) -> None:
    """External data and model are two renames: if the second fails, the first is undone."""
    out = tmp_path / "out.onnx"
    old = big_weight_model()
    io.save(old, out, external=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["out.onnx", "out.onnx.data"]
    real = os.replace

    def fail_on_model(src, dst):
        if Path(dst).name == "out.onnx":
            raise OSError(5, "Input/output error")
        real(src, dst)

    new = GraphBuilder(seed=1)
    x = new.input([1, 16, 6, 6], name="x")
    monkeypatch.setattr(io.os, "replace", fail_on_model)
    with pytest.raises(OnnxrepError, match="Input/output error"):
        io.save(new.model([new.conv(x, 16, 16, 3)]), out, external=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert _same_weights(io.load(out), old)
    # and with no previous output, nothing at all is left
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.setattr(io.os, "replace", fail_on_model)
    with pytest.raises(OnnxrepError):
        io.save(old, fresh / "out.onnx", external=True)
    monkeypatch.undo()
    assert _leftovers(fresh) == []


def _same_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    arrays = [{t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer} for m in (a, b)]
    return arrays[0].keys() == arrays[1].keys() and all(
        np.array_equal(arrays[0][k], arrays[1][k]) for k in arrays[0]
    )


def test_external_round_trip(tmp_path: Path) -> None:
    model = big_weight_model()
    out = tmp_path / "m.onnx"
    io.save(model, out, external=True)
    assert _leftovers(tmp_path) == ["m.onnx", "m.onnx.data"]
    shell = onnx.load(out, load_external_data=False)
    moved = [t for t in shell.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert moved and all(len(t.raw_data) == 0 for t in moved)
    for t in moved:
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == "m.onnx.data" and int(info["offset"]) % 4096 == 0
    onnx.checker.check_model(str(out))
    again = io.load(out)
    assert _same_weights(again, model)
    assert [n.name for n in again.graph.node] == [n.name for n in model.graph.node]
    assert again.graph.input == model.graph.input and again.graph.output == model.graph.output


def test_new_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; the renamed result must look like any other written file."""
    umask = os.umask(0o022)
    try:
        out = tmp_path / "new.onnx"
        io.save(big_weight_model(), out, external=True)
        for p in (out, tmp_path / "new.onnx.data"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644
        existing = tmp_path / "existing.onnx"
        existing.write_bytes(b"")
        existing.chmod(0o640)
        io.save(small_model(), existing)
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    finally:
        os.umask(umask)


def test_save_decides_external_by_size(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "m.onnx"
    io.save(big_weight_model(), out)
    assert _leftovers(tmp_path) == ["m.onnx"]
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", io.EXTERNAL_MARGIN + 1000)  # a tiny "2 GB"
    io.save(big_weight_model(), out)
    assert _leftovers(tmp_path) == ["m.onnx", "m.onnx.data"]
    assert _same_weights(io.load(out, check=False), big_weight_model())


def test_cli_failure_during_save_keeps_the_existing_output(good: Path, tmp_path: Path,
                                                          monkeypatch, capsys) -> None:
    out, before = _existing_output(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.os, "replace", refuse)
    assert main(["optimize", str(good), "-o", str(out)]) == 2
    monkeypatch.undo()
    _assert_one_line_error(capsys.readouterr().err, out, "cannot write (Permission denied)")
    assert out.read_bytes() == before
    assert _leftovers(tmp_path, "out.onnx", "good.onnx") == []


@pytest.mark.parametrize("sizing", ["encoded", "laid-out", "refused"])
def test_chunked_serialization_and_size_match_protobuf(tmp_path: Path, monkeypatch,
                                                       sizing: str) -> None:
    """save() writes one tensor at a time and serialized_size() encodes no weights of a large
    model (a small one it encodes, unless protobuf refuses: over 2 GB outside the
    initializers); both must agree with protobuf to the byte."""
    if sizing == "laid-out":
        monkeypatch.setattr(io, "ENCODE_BELOW", 0)
        monkeypatch.setattr(onnx.ModelProto, "ByteSize", None)  # must not be called
    elif sizing == "refused":
        def refuse(self: onnx.ModelProto) -> int:
            raise EncodeError("message too large")
        monkeypatch.setattr(onnx.ModelProto, "ByteSize", refuse)
    model = big_weight_model()
    model.doc_string = "after the graph in field order"
    onnx.helper.set_model_props(model, {"k": "v"})
    blob = model.SerializeToString()
    assert b"".join(io.serialize_chunks(model)) == blob
    assert io.serialized_size(model) == len(blob)
    io.save(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == blob


@pytest.mark.parametrize("weights", ["in-graph", "none", "no-graph"])
def test_size_by_parts_matches_protobuf_for_every_graph_field(monkeypatch, weights: str) -> None:
    """serialized_size() sizes a weight-heavy model part by part (each node, initializer and
    value_info; nothing encoded in bulk): exact for every kind of field a graph has, with
    initializers of every layout (raw above and below the small limit, typed fields,
    external), and for a model without weights or without a graph."""
    monkeypatch.setattr(onnx.ModelProto, "ByteSize", None)  # must not be called
    monkeypatch.setattr(io, "ENCODE_PER_PART", 0)
    model = big_weight_model()
    g = model.graph
    if weights == "no-graph":
        model.ClearField("graph")
    else:
        branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "then", [],
                                   [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                                  None)])
        g.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch,
                                       else_branch=branch, name="with subgraphs"))
        g.node[0].metadata_props.add(key="k", value="v" * 300)
        g.value_info.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2]))
        g.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(np.ones(2, np.float32), "s"),
            numpy_helper.from_array(np.array([0, 3], np.int64), "s_i"), [4]))
        g.quantization_annotation.add(tensor_name="z")
        g.quantization_annotation.add()  # a part of no bytes: its length still takes one
        g.metadata_props.add(key="graph", value="props")
        g.doc_string, g.name = "d" * 200, "named"
        if weights == "none":
            g.ClearField("initializer")
        else:
            g.initializer.append(helper.make_tensor("typed", onnx.TensorProto.FLOAT, [300],
                                                    [0.5] * 300))
            g.initializer.append(numpy_helper.from_array(np.ones((200, 200), np.float32), "big"))
            external = g.initializer.add(name="ext", data_type=onnx.TensorProto.FLOAT)
            external.dims.extend([1000, 1000])
            external.data_location = onnx.TensorProto.EXTERNAL
            external.external_data.add(key="location", value="w.bin")
    onnx.helper.set_model_props(model, {"k": "v"})
    assert io.serialized_size(model) == len(model.SerializeToString())


_UNKNOWN = b"\xf8\x06\x05"  # field 111, a varint: no onnx message has it


@pytest.mark.parametrize("where", ["model", "graph", "large tensor"])
def test_fields_onnx_does_not_know_are_sized_and_written(tmp_path: Path, monkeypatch,
                                                         where: str) -> None:
    """A model written by a newer onnx holds fields this one does not know: they are part of
    its bytes, so the size counts them and save writes them, on the part-by-part paths too."""
    monkeypatch.setattr(io, "ENCODE_PER_PART", 0)
    model = big_weight_model()
    model.graph.initializer.append(
        numpy_helper.from_array(np.ones((200, 200), np.float32), "big"))
    target = {"model": model, "graph": model.graph,
              "large tensor": model.graph.initializer[-1]}[where]
    target.ParseFromString(target.SerializeToString() + _UNKNOWN)
    blob = model.SerializeToString()
    assert _UNKNOWN in blob
    assert io.serialized_size(model) == len(blob)
    assert b"".join(io.serialize_chunks(model)) == blob
    io.save(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == blob


_UNKNOWN_EVERY_WIRE_TYPE = (_UNKNOWN + b"\x82\x07\x03abc" + b"\x8b\x07\xf8\x06\x01\x8c\x07"
                            + b"\x8d\x07\x01\x02\x03\x04" + b"\x89\x07" + b"\x01" * 8)
"""Fields 111-113 as a varint, bytes, a group, 32 and 64 bits."""


@pytest.mark.parametrize("where", ["model", "graph"])
@pytest.mark.parametrize("how", ["proto", "in place", "command line"])
def test_the_optimized_model_keeps_fields_onnx_does_not_know(tmp_path: Path, where: str,
                                                             how: str) -> None:
    """The optimized model is rebuilt around its graph: the model's and the graph's fields
    that the installed onnx does not know (every wire type) come along, as they were."""
    model = big_weight_model()
    target = model if where == "model" else model.graph
    target.ParseFromString(target.SerializeToString() + _UNKNOWN_EVERY_WIRE_TYPE)
    if how == "command line":
        src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
        io.save(model, src)
        assert main(["optimize", str(src), "-o", str(out), "-q"]) == 0
        blob = out.read_bytes()
        result = onnx.load_from_string(blob)
    else:
        opt = onnxrep.optimize(model, in_place=how == "in place")
        assert opt.applied
        result, blob = opt.model, opt.model.SerializeToString()
    assert _UNKNOWN_EVERY_WIRE_TYPE in blob
    assert len(result.graph.node) == 1  # the conv and its BN folded


@pytest.mark.parametrize(("edit", "word", "cli"), [
    (lambda raw: raw + b"\0" * 4, "more", ("out", "more raw bytes than its shape")),
    (lambda raw: raw[:-4], "fewer", ("in", "raw_data size (65532 bytes) is too small")),
])
def test_raw_data_of_another_length_than_its_shape_is_refused_not_written_corrupt(
        tmp_path: Path, capsys, edit: Callable[[bytes], bytes], word: str,
        cli: tuple[str, str]) -> None:
    """Raw bytes of another length than a tensor's shape takes (onnx's checker lets them
    pass, onnxruntime refuses them): the chunked writer, which sizes tensors from their
    shapes, refuses to write rather than write a file protobuf cannot read."""
    w = numpy_helper.from_array(np.ones((128, 128), np.float32), "w")  # 64 KiB: not encoded
    w.raw_data = edit(w.raw_data)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [128, 128])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [128, 128])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w]),
        opset_imports=[helper.make_opsetid("", 17)])
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    with pytest.raises(OnnxrepError, match=f"{word} raw bytes than its shape"):
        io.save(model, out)
    assert not out.exists()
    assert main(["optimize", str(src), "-o", str(out), "--no-audit"]) == 2
    named = {"in": src, "out": out}[cli[0]]  # too few: onnx's checker refuses the input
    _assert_one_line_error(capsys.readouterr().err, named, cli[1])
    assert _leftovers(tmp_path, "in.onnx") == []
