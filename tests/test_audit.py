"""The fusion audit: onnxruntime's fused kernels of the input survive in the output.

The audit needs no list of idioms: it reads the kernels onnxruntime makes of the input, and
withdraws any fold that would make the output run one of them in pieces. These tests switch
the idiom list off to show the audit alone catches a loss, and check the bookkeeping: light
copies, kernels at risk, what is reported, the CLI switch, and the not-faster warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import onnxrep
from onnxrep import audit, fusions, idioms, io, report
from onnxrep.bench import BenchResult, Timing, ratio_interval
from onnxrep.cli import EXIT_OK, EXIT_TOO_SLOW, main
from onnxrep.report import not_faster
from tests.builders import GraphBuilder, op_counts
from tests.helpers import assert_equivalent
from tests.idiomgraphs import conv_model, gelu_torchscript, gemm_model, layer_norm, qdq_model


@pytest.fixture
def no_idiom_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime fusion that no list names: the guard knows no idiom at all."""
    monkeypatch.setattr(idioms, "find", lambda graph, shapes=None: [])


def _kinds(model: onnx.ModelProto) -> dict[str, int]:
    return audit.kernels_of(model).counts()


def test_inventory_reads_fused_kernels_and_their_insides() -> None:
    model = conv_model(gelu_torchscript)
    inv = audit.kernels_of(model)
    (gelu,) = [k for k in inv.kernels if k.kind == "Gelu"]
    ops = {n.output[0]: n.op_type for n in model.graph.node}
    assert sorted(ops[t] for t in gelu.replaced) == ["Add", "Div", "Erf", "Mul", "Mul"]
    assert sorted(ops[t] for t in gelu.internal) == ["Add", "Div", "Erf", "Mul"]
    assert gelu.outputs[0] in gelu.replaced and gelu.outputs[0] not in gelu.internal


def test_the_audit_catches_a_split_no_list_names(no_idiom_list: None) -> None:
    model = conv_model(gelu_torchscript)
    unaudited = onnxrep.optimize(model, audit=False)
    assert _kinds(unaudited.model).get("Gelu", 0) == 0  # the fold splits the Gelu kernel
    assert [x.kind for x in audit.compare_models(model, unaudited.model)] == ["Gelu"]

    result = onnxrep.optimize(model)
    assert _kinds(result.model)["Gelu"] == 1  # ... and the audit withdraws it
    assert [x.kind for x in result.audit.withdrawn] == ["Gelu"]
    assert result.audit.remaining == []
    assert any("fusion audit" in s.reason and "Gelu" in s.reason for s in result.skipped)
    assert op_counts(result.model)["Conv"] == 2
    assert "BatchNormalization" not in op_counts(result.model)  # the other fold stays
    assert_equivalent(model, result.model)
    assert audit.compare_models(model, result.model) == []


def _with_a_constant_subgraph(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the divisor of its Div computed in the graph (a constant subgraph the
    pipeline folds first, so it works on a copy of the input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    (div,) = [n for n in g.node if n.op_type == "Div"]
    half = onnx.numpy_helper.to_array(next(t for t in g.initializer if t.name == div.input[1]))
    g.initializer.append(onnx.numpy_helper.from_array(half / 2, "divisor_half"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array(2, half.dtype), "two"))
    g.node.insert(0, onnx.helper.make_node("Mul", ["divisor_half", "two"], ["divisor"]))
    div.input[1] = "divisor"
    return out


@pytest.mark.parametrize("how", ["proto", "in_place", "path", "folded", "large"])
def test_a_withdrawal_gives_the_same_model_however_it_is_built(
    how: str, no_idiom_list: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """While onnxruntime reviews the kernels a fold touched, a small result is built and
    checked ahead; when the review withdraws the fold, it is built again from an intact
    source. A source too large to copy is reviewed first and rebuilt in place once."""
    from onnxrep import pipeline

    exports: list[bool] = []
    real = pipeline.export
    monkeypatch.setattr(pipeline, "export", lambda graph, source, in_place=False: (
        exports.append(in_place) or real(graph, source, in_place=in_place)))
    if how == "large":
        monkeypatch.setattr(pipeline, "SPECULATE_BELOW", 0)
    model = conv_model(gelu_torchscript)
    if how in ("folded", "large"):
        model = _with_a_constant_subgraph(model)
    given = onnx.ModelProto()
    given.CopyFrom(model)
    if how == "path":
        onnx.save(model, tmp_path / "m.onnx")
        result = onnxrep.optimize(tmp_path / "m.onnx")
    else:
        result = onnxrep.optimize(given, in_place=how == "in_place")
    assert [x.kind for x in result.audit.withdrawn] == ["Gelu"]
    assert _kinds(result.model)["Gelu"] == 1
    assert op_counts(result.model)["Conv"] == 2 and "Div" in op_counts(result.model)
    assert_equivalent(model, result.model)
    if how == "in_place":
        assert result.model is given  # rebuilt, as in_place promises
    else:
        assert given == model  # the input is intact
    # built ahead, then again after the withdrawal; in place only once the review is done
    assert exports == ([True] if how == "large" else [False, how != "proto"])
    reference = onnxrep.optimize(model).model
    assert result.model.SerializeToString() == reference.SerializeToString()


def test_a_result_built_ahead_that_fails_the_checker_waits_for_the_review(
    no_idiom_list: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checker's verdict on a result built during the review counts only if the review
    keeps it: a withdrawal rebuilds it (and checks it again); else the error stands."""
    from onnxrep import pipeline
    from onnxrep.errors import OnnxrepError

    checks: list[int] = []
    real = pipeline._check

    def first_fails(model: onnx.ModelProto, original: onnx.ModelProto | None) -> None:
        checks.append(len(model.graph.node))
        if len(checks) == 1:
            raise OnnxrepError("internal error: the optimized model fails onnx.checker: test")
        real(model, original)

    monkeypatch.setattr(pipeline, "_check", first_fails)
    result = onnxrep.optimize(conv_model(gelu_torchscript))
    assert [x.kind for x in result.audit.withdrawn] == ["Gelu"] and len(checks) == 2
    assert checks[0] < checks[1]  # the second result keeps the Gelu's nodes

    checks.clear()
    verdicts: list[bool] = []
    withdraws = pipeline._Review.withdraws
    monkeypatch.setattr(pipeline._Review, "withdraws", lambda self, protected: (
        verdicts.append(withdraws(self, protected)) or verdicts[-1]))
    with pytest.raises(OnnxrepError, match="test"):
        onnxrep.optimize(_touched_fused_conv())
    assert len(checks) == 1 and verdicts == [False]  # FusedConv[Relu] reviewed, kept


def _touched_fused_conv() -> onnx.ModelProto:
    """``Relu(Conv3x3(Conv1x1(x)))``: the 1x1 merges into the 3x3, whose FusedConv[Relu]
    kernel the audit then reviews (and keeps)."""
    b = GraphBuilder(seed=2)
    x = b.input([1, 4, 8, 8])
    y = b.conv(b.conv(x, 4, 8, 1), 8, 8, 3, pads=[0, 0, 0, 0])
    return b.model([b.node("Relu", [y])])


def test_a_kept_review_in_place_rebuilds_the_given_model() -> None:
    model = _touched_fused_conv()
    reference = onnxrep.optimize(model)
    assert reference.audit.at_risk == 1 and reference.audit.after == {"FusedConv[Relu]": 1}
    result = onnxrep.optimize(model, in_place=True)
    assert result.model is model and op_counts(model) == {"Conv": 1, "Relu": 1}
    assert model.SerializeToString() == reference.model.SerializeToString()


def test_a_failure_during_the_review_drops_its_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while the result is built ahead (here: in the export) is raised as it is, and
    the verdict nobody will collect is dropped when it comes, not kept."""
    from onnxrep import pipeline

    def broken(*args: Any, **kwargs: Any) -> onnx.ModelProto:
        raise RuntimeError("export failed")

    monkeypatch.setattr(pipeline, "export", broken)
    with pytest.raises(RuntimeError, match="export failed"):
        onnxrep.optimize(_touched_fused_conv())
    monkeypatch.undo()
    audit.kernels_of(conv_model(gelu_torchscript))  # answered after the dropped reply
    assert audit._worker()._replies == {} and audit._worker()._forgotten == set()


def test_the_audit_keeps_a_layer_norm_no_list_names(no_idiom_list: None) -> None:
    """LayerNorm's scale and shift before a Gemm: the audit keeps them out of the Gemm."""
    model = gemm_model(layer_norm)
    result = onnxrep.optimize(model)
    assert _kinds(result.model).get("LayerNormalization", 0) == _kinds(model)[
        "LayerNormalization"]
    assert audit.compare_models(model, result.model) == []


def test_nothing_at_risk_costs_no_second_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the guard on, no fold touches the Gelu kernel: the output is not audited at all."""
    calls = []
    real = audit._Worker.submit
    monkeypatch.setattr(audit._Worker, "submit",
                        lambda self, *a: calls.append(1) or real(self, *a))
    result = onnxrep.optimize(conv_model(gelu_torchscript))
    assert result.audit.before["Gelu"] == 1 and result.audit.at_risk == 0
    assert result.audit.after is None and len(calls) == 1  # the input's, in the background


def test_nothing_folded_needs_no_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no fold the output is the input: the audit does not wait for onnxruntime, says
    so, and the reply that comes later is dropped rather than kept."""
    b = GraphBuilder(seed=2)
    x = b.input([1, 4, 8, 8])
    model = b.model([b.node("Relu", [b.conv(x, 4, 8, 3)])])  # a FusedConv, nothing to fold
    collected = []
    real = audit._Worker.collect
    monkeypatch.setattr(audit._Worker, "collect",
                        lambda self, t: collected.append(t) or real(self, t))
    result = onnxrep.optimize(model)
    assert result.applied == [] and result.audit.not_needed and result.audit.before == {}
    assert collected == []
    assert report.audit_summary(result) == "not needed: nothing was folded"
    assert audit.kernels_of(model).counts() == {"FusedConv[Relu]": 1}  # collects past it
    assert audit._worker()._replies == {} and audit._worker()._forgotten == set()


def test_requests_never_wait_for_replies_nobody_reads() -> None:
    """Many requests in a row, large and small, most forgotten before their reply: the pipes
    fill in both directions unless replies are read as they come; none may hang, mix up or
    leak a reply."""
    import threading

    small = conv_model(gelu_torchscript)
    b = GraphBuilder(seed=4)
    x = b.input([1, 4, 8, 8])
    for _ in range(300):  # a request of ~100 kB: more than a pipe holds
        x = b.node("Relu", [b.conv(x, 4, 4, 1)])
    large = b.model([x])
    want = {id(large): {"FusedConv[Relu]": 300}, id(small): {"Gelu": 1}}
    worker, seen = audit._worker(), []

    def counts(model: onnx.ModelProto, reply: bytes) -> dict[str, int]:
        if reply[:1] == fusions.KERNELS:
            return fusions.decode(reply[1:]).counts()
        return fusions.read(audit.view(model), reply[1:], audit.weights(model)).counts()

    def run() -> None:
        for i in range(121):  # every 40th collected: the replies between fill a pipe
            model = large if i % 10 == 5 else small
            ticket = worker.submit(audit.view(model).SerializeToString(), audit.weights(model))
            if i % 40:
                worker.forget(ticket)
            else:
                seen.append(counts(model, worker.collect(ticket)) == want[id(model)])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the audit's helper deadlocked"
    assert len(seen) == 4 and all(seen)
    assert worker._replies == {} and worker._forgotten == set() and worker._owner == {}


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_a_forked_child_lets_go_of_the_parents_helper() -> None:
    """The process forks while its helper runs: the child audits with a helper of its own,
    and lets go of its copies of the parent's pipes, so the parent's helper still ends when
    the parent closes them (not killed after a timeout) while the child lives on."""
    import multiprocessing

    model = conv_model(gelu_torchscript)
    assert _kinds(model) == {"Gelu": 1}  # the parent's helper is up
    worker = audit._worker()
    fork = multiprocessing.get_context("fork")
    audited, done = fork.Event(), fork.Event()
    child = fork.Process(target=_audit_in_child, args=(model, audited, done))
    child.start()
    try:
        assert audited.wait(timeout=60), "the child could not audit"
        helper = worker._process
        assert helper is not None
        worker.close()
        assert helper.returncode == 0  # ended by its stdin's end, not killed
    finally:
        done.set()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert _kinds(model) == {"Gelu": 1}  # and the parent starts a new one


def _audit_in_child(model: onnx.ModelProto, audited: Any, done: Any) -> None:
    import os

    if audit.kernels_of(model).counts() == {"Gelu": 1}:
        audited.set()
    done.wait(timeout=30)
    os._exit(0)


def test_audit_off_and_unavailable() -> None:
    assert onnxrep.optimize(conv_model(gelu_torchscript), audit=False).audit is None
    # onnxruntime has no float64 Conv kernel: the audit says so and the folds go ahead
    model = conv_model(gelu_torchscript, dtype=np.float64)
    result = onnxrep.optimize(model)
    assert "onnxruntime cannot optimize it" in result.audit.unavailable
    assert "BatchNormalization" not in op_counts(result.model)


def _serve(requests: list[bytes], reads: bool, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Run the helper's loop in this process on ``requests``; its replies, in order. Unless
    it ``reads`` the kernels, it is as if it had no model class."""
    import io as stdio
    import os
    import struct

    if not reads:
        monkeypatch.setattr(fusions, "_model_class", lambda: None)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as w:
        w.write(b"".join(requests))
    sink = stdio.BytesIO()
    try:
        fusions.serve(read_end, sink)
    finally:
        os.close(read_end)
    data, replies = sink.getvalue(), []
    while data:
        _, size = struct.unpack("<QQ", data[:16])
        replies.append(data[16:16 + size])
        data = data[16 + size:]
    return replies


def test_the_helper_reads_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper reads the kernels itself; without a model class it sends onnxruntime's
    optimized model and the caller reads it: both give the same inventory. A model it cannot
    optimize gets a one-line error, and the loop goes on."""
    model = conv_model(gelu_torchscript)
    copy, weights = audit.view(model), audit.weights(model)
    bad = conv_model(gelu_torchscript, dtype=np.float64)  # no float64 Conv kernel
    requests = [fusions.request(1, copy.SerializeToString(), weights),
                fusions.request(2, audit.view(bad).SerializeToString(), audit.weights(bad))]
    (kernels, _) = _serve(requests, reads=True, monkeypatch=monkeypatch)
    raw, failed = _serve(requests, reads=False, monkeypatch=monkeypatch)
    assert raw[:1] == fusions.OPTIMIZED and kernels[:1] == fusions.KERNELS
    assert failed[:1] == fusions.FAILED and b"\n" not in failed
    here, there = fusions.read(copy, raw[1:], weights), fusions.decode(kernels[1:])
    assert here.counts() == {"Gelu": 1}
    assert (here.kernels, here.produced, here.signatures) == (
        there.kernels, there.produced, there.signatures)


@pytest.mark.parametrize("where", ["memory", "no memory folder", "too large for memory",
                                   "memory folder full"])
def test_the_helper_writes_where_it_can(where: str, tmp_path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime writes the optimized graph to a folder in memory when there is one and the
    request is small, else to the disk; the inventory is the same, and nothing is left."""
    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.setattr(fusions, "MEMORY_FOLDER", str(memory if where != "no memory folder"
                                                      else tmp_path / "absent"))
    if where == "too large for memory":
        monkeypatch.setattr(fusions, "IN_MEMORY_BELOW", 1)
    folders: list[str] = []
    optimized = fusions._optimized

    def write(ort, model, folder):  # type: ignore[no-untyped-def]
        folders.append(folder)
        if where == "memory folder full" and folder.startswith(str(memory)):
            raise RuntimeError("Protobuf serialization failed")  # what onnxruntime says
        return optimized(ort, model, folder)

    monkeypatch.setattr(fusions, "_optimized", write)
    model = conv_model(gelu_torchscript)
    request = fusions.request(1, audit.view(model).SerializeToString(), audit.weights(model))
    replies = _serve([request, request], reads=True, monkeypatch=monkeypatch)
    assert [fusions.decode(r[1:]).counts() for r in replies] == [{"Gelu": 1}] * 2
    in_memory = [f.startswith(str(memory)) for f in folders]
    assert in_memory == {"memory": [True, True], "memory folder full": [True, False, False]
                         }.get(where, [False, False])  # full: retried on disk, then disk only
    assert list(memory.iterdir()) == []


def test_the_helper_does_not_import_onnx() -> None:
    """The helper gets its model class from onnx's generated protobuf module alone: the onnx
    package (a second to import) would hold up the first request, and the exit."""
    import subprocess
    import sys

    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('f', "
            "sys.argv[1]); m = importlib.util.module_from_spec(s); sys.modules['f'] = m; "
            "s.loader.exec_module(m); c = m._model_class(); "
            "print(c.__name__, c.DESCRIPTOR.full_name, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, fusions.__file__], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["ModelProto", "onnx.ModelProto", "False"]


def test_light_copy_keeps_what_fusions_read() -> None:
    b = GraphBuilder(seed=1)
    x = b.input([1, 64, 8, 8])
    y = b.conv(x, 64, 64, 3)
    model = b.model([y])
    copy = audit.view(model)
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights[0].name in {i.name for i in copy.graph.input}  # the 64x64x3x3 weight
    assert weights[0].name not in {t.name for t in copy.graph.initializer}
    assert len(copy.SerializeToString()) < len(model.SerializeToString()) / 20
    qdq = qdq_model()
    scales = {n.input[1] for n in qdq.graph.node if n.op_type in io.QDQ_OPS}
    assert scales <= {t.name for t in audit.view(qdq).graph.initializer}


def test_node_metadata_stays_in_the_output_not_in_the_light_copies() -> None:
    """Dynamo exports describe every node in metadata_props: the pipeline's light copies
    (shape inference, the audit) leave them out, the output keeps those of the nodes it keeps,
    and the audit sees the same kernels."""
    model = conv_model(gelu_torchscript)
    for i, node in enumerate(model.graph.node):
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.fx_node", f"%node_{i} : " + "x" * 200
    given = model.SerializeToString()
    light = io.light_copy(model, node_metadata=False)
    assert all(len(n.metadata_props) == 0 for n in light.graph.node)
    assert all(len(n.metadata_props) == 1 for n in io.light_copy(model).graph.node)
    assert model.SerializeToString() == given
    result = onnxrep.optimize(model)
    assert result.audit.before == {"Gelu": 1} and _kinds(result.model)["Gelu"] == 1
    kept = {n.output[0]: n for n in model.graph.node}
    for node in result.model.graph.node:
        if node.op_type in ("Div", "Erf", "Add", "Mul"):  # the Gelu's nodes, as they were
            assert node == kept[node.output[0]]
    assert model.SerializeToString() == given


def test_report_and_cli_switch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gelu.onnx"
    onnx.save(conv_model(gelu_torchscript), path)
    report = tmp_path / "r.json"
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"),
                 "--report", str(report)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "fusions    onnxruntime fuses 1 kernel(s) in the input (Gelu 1)" in out
    assert json.loads(report.read_text())["audit"]["before"] == {"Gelu": 1}
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--no-audit",
                 "--report", str(report)]) == EXIT_OK
    assert "fusions" not in capsys.readouterr().out
    assert json.loads(report.read_text())["audit"] is None


# -- not faster than the input ---------------------------------------------------------------


def _timing(ratio_low: float, ratio_high: float, speedup: float = 1.0) -> BenchResult:
    return BenchResult(
        [Timing("input", 1.0, 1.1, 0.9, 1.0, 50), Timing("optimized", 1.0, 1.1, 0.9, 1.0, 50,
                                                          speedup)],
        threads=1, level="all", warmup=10, runs=50, speedup=speedup, speedup_p10=0.9,
        speedup_p90=1.1, speedup_low=ratio_low, speedup_high=ratio_high,
    )


def test_ratio_interval() -> None:
    rng = np.random.default_rng(0)
    b = 1 + 0.1 * rng.random(200)
    assert ratio_interval(2 * b, b) == pytest.approx((2.0, 2.0))
    low, high = ratio_interval(rng.permutation(b), b)  # equal medians, unpaired noise
    assert low < 1 < high and high - low < 0.05


def test_not_faster_names_the_likely_cause() -> None:
    model = conv_model(gelu_torchscript)
    result = onnxrep.optimize(model)
    assert not_faster(_timing(1.05, 1.2, 1.1), result) is None
    warning = not_faster(_timing(0.97, 1.03), result)
    assert "not faster than input beyond the measured noise" in warning
    assert "BatchNormalization" in warning  # only conv-bn folds: the runtime does them itself
    warning = not_faster(_timing(0.97, 1.03), None, ["Gelu", "Gelu"])
    assert "2 fused kernel(s) now run in pieces (Gelu 2)" in warning


@pytest.mark.parametrize(("low", "bar", "code"), [
    (0.98, 1.0, EXIT_TOO_SLOW), (1.01, 1.0, EXIT_OK), (0.98, None, EXIT_OK),
    (0.98, 0.9, EXIT_OK),
])
def test_check_fails_a_model_not_faster_beyond_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    low: float, bar: float | None, code: int,
) -> None:
    import onnxrep.bench

    monkeypatch.setattr(onnxrep.bench, "benchmark", lambda *a, **k: _timing(low, 1.1, 1.05))
    path = tmp_path / "gelu.onnx"
    onnx.save(conv_model(gelu_torchscript), path)
    args = ["check", str(path), "--seeds", "1"] + (["--min-speedup", str(bar)] if bar else [])
    assert main(args) == code
    err = capsys.readouterr().err
    assert ("warning: optimized is not faster" in err) == (low < 1)


def test_bench_warns_with_the_split_kernels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    no_idiom_list: None,
) -> None:
    """``bench A B`` of two models onnxrep did not make: the audit between them names the
    Gelu kernel B runs in pieces."""
    import onnxrep.bench

    model = conv_model(gelu_torchscript)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model, a)
    onnx.save(onnxrep.optimize(model, audit=False).model, b)
    monkeypatch.setattr(onnxrep.bench, "benchmark", lambda *m, **k: _timing(0.9, 1.05))
    assert main(["bench", str(a), str(b)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "is not faster than" in err and "now run in pieces (Gelu 1)" in err
