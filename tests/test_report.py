"""Reports (JSON, Markdown, HTML), N-model timing, progress lines and --quiet/--verbose."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxrep import report as report_module
from onnxrep.bench import BenchResult, Timing, benchmark, round_order
from onnxrep.cli import main
from onnxrep.errors import OnnxrepError
from onnxrep.pipeline import optimize
from onnxrep.progress import Progress
from onnxrep.report import COLOURS, Report, Verdict, render_html, render_markdown, write
from onnxrep.verify import compare
from tests.builders import GraphBuilder

NASTY = "<script>alert(1)</script>|a`b*c_[d]&e"


def folding_model() -> onnx.ModelProto:
    """A RepVGG block (folds) followed by a conv whose output is also a graph output (skipped),
    with names that need escaping in every format."""
    g = GraphBuilder(seed=1)
    x = g.input([1, 8, 12, 12], name="x")
    a = g.bn(g.conv(x, 8, 8, 3), 8)
    b = g.bn(g.conv(x, 8, 8, 1), 8)
    y = g.node("Relu", [g.node("Sum", [a, b, g.bn(x, 8)])])
    c = g.node("Conv", [y, g.init(g.rng.standard_normal((8, 8, 3, 3)) * 0.3)],
               outputs=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return g.model([g.node("GlobalAveragePool", [g.bn(c, 8, name=NASTY)]), c])


def full_report(tmp_path: Path, *, deploy: bool = False) -> Report:
    model = folding_model()
    result = optimize(model)
    rep = Report(f"{tmp_path}/{NASTY}.onnx", str(tmp_path / "out.onnx"), result, written=True)
    rep.parity = compare(model, result.model, seeds=1)
    models = [model, result.model] + ([result.model] if deploy else [])
    rep.timing = benchmark(*models, runs=3, warmup=1,
                           names=("input", "optimized", "deploy-form"))
    return rep


@pytest.fixture
def rep(tmp_path: Path) -> Report:
    return full_report(tmp_path, deploy=True)


# -- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, start", [
    (".json", "{"), (".md", "### onnxrep"), (".markdown", "### onnxrep"),
    (".html", "<!DOCTYPE html>"), (".HTM", "<!DOCTYPE html>"),
])
def test_format_follows_the_extension(rep: Report, tmp_path: Path, suffix: str,
                                      start: str) -> None:
    path = tmp_path / f"report{suffix}"
    write(rep, path)
    assert path.read_text(encoding="utf-8").startswith(start)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_unknown_extension_is_refused(rep: Report, tmp_path: Path) -> None:
    with pytest.raises(OnnxrepError, match=r"\.json, \.md or \.html"):
        write(rep, tmp_path / "report.txt")
    assert not (tmp_path / "report.txt").exists()


def test_write_is_atomic(rep: Report, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "report.html"
    path.write_text("previous", encoding="utf-8")

    def fail(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module.os, "replace", fail)
    with pytest.raises(OnnxrepError, match="cannot write report"):
        write(rep, path)
    assert path.read_text(encoding="utf-8") == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_json_keeps_its_keys(rep: Report) -> None:
    data = json.loads(report_module.render(rep, "json"))
    for key in ("onnxrep", "input", "output", "written", "applied", "applied_by_pattern",
                "skipped", "before", "after", "seconds", "rounds", "notes", "parity", "timing"):
        assert key in data
    assert data["applied_by_pattern"] == {"branches": 1}
    assert [t["name"] for t in data["timing"]["timings"]] == ["input", "optimized", "deploy-form"]
    assert data["check"] is None and data["deploy_form"] is None


def test_markdown_is_a_compact_escaped_summary(rep: Report) -> None:
    text = render_markdown(rep)
    assert "| nodes | 10 | 5 | -50.0 % |" in text
    assert "| BatchNormalization | 4 | 1 | -3 |" in text
    assert "**Folds**: 1 (branches 1)" in text
    assert "<details><summary>Skipped candidates (1, 1 reason(s))</summary>" in text
    assert "| output | max abs | bound |" in text and "| deploy\\-form |" not in text
    assert "| deploy-form |" in text and "latency p50" in text
    # model-controlled text can neither open HTML nor break a table row
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\|a\\`b\\*c\\_\\[d\\]&amp;e" in text
    for line in text.splitlines():
        if line.startswith("| "):
            assert line.endswith(" |")


def test_html_is_self_contained_and_escaped(rep: Report) -> None:
    page = render_html(rep)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    lowered = page.lower()
    for fetch in ("<link", "src=", "url(", "@import", "@font-face", "https:"):
        assert fetch not in lowered
    assert lowered.count("http:") == lowered.count('xmlns="http://www.w3.org/2000/svg"')
    assert "default-src 'none'" in page  # the browser refuses any fetch, too
    for section in ("Latency", "Operators", "Folds applied (1)", "Skipped candidates (1)",
                    "Parity"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("<svg") == 3  # latency, operators, folds
    for colour in COLOURS[:3]:
        assert f'fill="{colour}"' in page


def test_html_without_timing_or_parity_says_so(tmp_path: Path) -> None:
    rep = Report("in.onnx", None, optimize(folding_model()))
    page = render_html(rep)
    assert "Not measured" in page and "Not checked" in page and "(not written)" in page
    assert page.count("<svg") == 2


def test_check_verdict_in_every_format(rep: Report) -> None:
    rep.check = Verdict(False, 3, "speedup 1.02x is below --min-speedup 1.10x", 1.1)
    assert "Check FAILED: speedup 1.02x" in render_html(rep)
    assert "**check FAILED**: speedup 1.02x" in render_markdown(rep)
    assert json.loads(report_module.render(rep, "json"))["check"]["code"] == 3


# -- the HTML in a browser -----------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG as an (h, w, channels) uint8 array (non-interlaced)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    rows = raw.reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            cur = (line + prev) % 256
        else:  # Average, Paeth: sequential along the row (plain ints: numpy scalars are slow)
            up, raw_row, got = prev.tolist(), line.tolist(), [0] * line.size
            for i, x in enumerate(raw_row):
                a = got[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                got[i] = (x + pred) & 0xFF
            cur = np.asarray(got, dtype=np.int32)
        out[y] = cur
        prev = cur.astype(np.int32)
    return out.reshape(height, width, bpp)


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_html_screenshot_in_chromium(rep: Report, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    write(rep, page)
    profile = tmp_path / "profile"
    profile.mkdir()
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
         "--window-size=1200,1600", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert png.exists(), run.stderr[-2000:]
    data = png.read_bytes()
    assert len(data) > 20_000  # a rendered page, not a blank one
    pixels = decode_png(data)[:, :, :3]
    assert pixels.shape[:2] == (1600, 1200)
    packed = pixels.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    assert np.unique(packed).size > 50  # text, cards and charts, not a flat page
    for colour in COLOURS[:3]:  # input, optimized and deploy-form bars are drawn
        r, g, b = _rgb(colour)
        hits = np.all(np.abs(pixels.astype(int) - (r, g, b)) <= 2, axis=-1)
        assert hits.sum() > 500, f"no bar of colour {colour} in the screenshot"


# -- timing of N models --------------------------------------------------------------------------


def test_round_order_is_a_latin_square() -> None:
    assert [round_order(i, 2) for i in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    for n in (3, 4):
        rounds = [round_order(i, n) for i in range(n)]
        for position in range(n):
            assert sorted(r[position] for r in rounds) == list(range(n))


def test_benchmark_three_models(tmp_path: Path) -> None:
    model = folding_model()
    opt = optimize(model).model
    seen: list[tuple[int, int]] = []
    t = benchmark(model, opt, opt, runs=4, warmup=2, names=("input", "optimized"),
                  progress=lambda done, total: seen.append((done, total)))
    assert [x.name for x in t.timings] == ["input", "optimized", "C"]
    assert [x.runs for x in t.timings] == [4, 4, 4]
    assert t.timings[0].speedup is None and t.speedup == t.timings[1].speedup
    assert seen == [(i, 6) for i in range(1, 7)]
    g = GraphBuilder()
    other = g.model([g.node("Relu", [g.input([1, 8, 12, 12], name="y")])])
    with pytest.raises(OnnxrepError, match="different inputs"):
        benchmark(model, other, runs=1, warmup=0)


def test_timing_lines_for_three_models() -> None:
    t = BenchResult(
        [Timing("input", 2.0, 2.2, 1.9, 2.0, 5), Timing("optimized", 1.0, 1.1, 0.9, 1.0, 5, 2.0),
         Timing("deploy-form", 0.8, 0.9, 0.7, 0.8, 5, 2.5)],
        threads=1, level="all", warmup=1, runs=5, speedup=2.0, speedup_p10=1.9, speedup_p90=2.1,
    )
    lines = report_module.timing_lines(t)
    assert lines[3].endswith("2.50x") and lines[3].lstrip().startswith("deploy-form p50")
    assert lines[4].lstrip().startswith("speedup     2.00x")


@pytest.mark.parametrize(("speedup", "low", "high", "said"), [
    (1.30, 1.20, 1.40, "**1.30x** faster"),
    (1.002, 0.99, 1.01, "**1.00x** (within the noise)"),  # no "faster" that the interval denies
    (0.90, 0.85, 0.95, "**0.90x** (slower)"),
    (1.50, None, None, "**1.50x** (no interval: too few runs)"),
])
def test_markdown_says_what_the_interval_of_the_speedup_says(
    rep: Report, speedup: float, low: float | None, high: float | None, said: str,
) -> None:
    assert rep.timing is not None
    rep.timing.speedup, rep.timing.speedup_low, rep.timing.speedup_high = speedup, low, high
    assert said in render_markdown(rep)


# -- progress and feedback -----------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_only(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    tty = FakeTerminal()
    progress = Progress(tty, delay=0.0, interval=0.01)
    assert progress.live
    with progress.step("timing") as tick:
        tick(3, 10)
        import time

        time.sleep(0.05)
    text = tty.getvalue()
    assert "\rtiming" in text and "3/10" in text and text.endswith("\r\x1b[K")
    pipe = io.StringIO()
    quiet = Progress(pipe, delay=0.0, interval=0.01)
    assert not quiet.live
    with quiet.step("timing") as tick:
        tick(1, 2)
    assert pipe.getvalue() == "" and [label for label, _ in quiet.steps] == ["timing"]
    monkeypatch.setenv("TERM", "dumb")
    assert not Progress(FakeTerminal()).live


def test_progress_verbose_logs_each_step_and_survives_errors() -> None:
    out = io.StringIO()
    progress = Progress(out, live=False, verbose=True)
    with pytest.raises(ValueError), progress.step("loading"):
        raise ValueError("boom")
    assert out.getvalue() == "" and [label for label, _ in progress.steps] == ["loading"]
    with progress.step("optimizing"):
        pass
    assert "onnxrep: optimizing: " in out.getvalue()


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(folding_model(), path)
    return path


def test_optimize_writes_markdown_and_html_reports(model_path: Path, tmp_path: Path) -> None:
    out, md, page = tmp_path / "o.onnx", tmp_path / "r.md", tmp_path / "r.html"
    args = ["optimize", str(model_path), "-o", str(out), "--verify", "--bench", "--runs", "3",
            "--warmup", "0", "--seeds", "1"]
    assert main([*args, "--report", str(md)]) == 0
    assert main([*args, "--report", str(page), "--deploy-form", str(out)]) == 0
    assert "| parity |  | ok | 1 input set(s) |" in md.read_text(encoding="utf-8")
    html_text = page.read_text(encoding="utf-8")
    assert "deploy-form" in html_text and f'fill="{COLOURS[2]}"' in html_text


def test_bad_report_or_deploy_form_fails_before_writing(model_path: Path, tmp_path: Path,
                                                       capsys) -> None:
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "--report", "r.txt"]) == 2
    assert main(["optimize", str(model_path), "-o", str(out), "--deploy-form",
                 str(model_path)]) == 2
    assert "needs --bench" in capsys.readouterr().err
    assert main(["optimize", str(model_path), "-o", str(out), "--bench", "--deploy-form",
                 str(tmp_path / "missing.onnx")]) == 2
    assert not out.exists()


def test_quiet_prints_nothing_and_verbose_explains(model_path: Path, tmp_path: Path,
                                                   capsys) -> None:
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "--verify", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "" and out.exists()
    assert main(["compare", str(model_path), str(out), "--quiet"]) == 0
    assert main(["bench", str(model_path), "--runs", "1", "--warmup", "0", "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["optimize", str(model_path), "-o", str(out), "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "  applied" in captured.out and "graph output" in captured.out
    assert "onnxrep: optimizing: " in captured.err and "onnxrep: loading " in captured.err
    with pytest.raises(SystemExit):
        main(["optimize", str(model_path), "-o", str(out), "-q", "-v"])


def test_quiet_still_reports_errors(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tmp_path / "nope.onnx"), str(tmp_path / "nope.onnx"), "-q"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bench_three_models_on_the_command_line(model_path: Path, capsys) -> None:
    assert main(["bench", str(model_path), str(model_path), str(model_path), "--runs", "2",
                 "--warmup", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in data["timings"]] == ["model.onnx", "model.onnx (2)",
                                                    "model.onnx (3)"]


def test_report_and_model_are_written_all_or_nothing(model_path: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    nowhere = tmp_path / "nowhere"
    assert main(["optimize", str(model_path), "-o", str(out), "--report",
                 str(nowhere / "r.json")]) == 2
    assert not out.exists()  # refused before any work
    assert main(["optimize", str(model_path), "-o", str(nowhere / "o.onnx"), "--report",
                 str(report)]) == 2
    assert not report.exists()  # no report claims a model that could not be written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_reports_progress_and_cli_do_not_import_onnxruntime() -> None:
    code = ("import sys, onnxrep.cli, onnxrep.progress, onnxrep.report, onnxrep.testing; "
            "sys.exit('onnxruntime' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
