"""Shared fixtures: each models/ network is built once and each export written once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn

from models.export import export
from models.nets import NETWORKS
from tests.helpers import perturbed


class Exports:
    """``exports(name, form, deploy)`` → the path of that export, made on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._nets: dict[str, nn.Module] = {}
        self._paths: dict[tuple[str, str, bool], Path] = {}

    def net(self, name: str) -> nn.Module:
        if name not in self._nets:
            self._nets[name] = NETWORKS[name].factory()
        return self._nets[name]

    def __call__(self, name: str, form: str, deploy: bool = False) -> Path:
        key = (name, form, deploy)
        if key not in self._paths:
            path = self.folder / f"{name}{'.deploy' if deploy else ''}.{form}.onnx"
            spec = NETWORKS[name]
            self._paths[key] = export(self.net(name), spec.input_shape, path, form,
                                      deploy=deploy, opset=spec.opset)
        return self._paths[key]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of one network run in one worker (``-n`` with ``--dist loadgroup``), so each
    export is made once."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("name") if callspec is not None else None
        if isinstance(name, str) and name in NETWORKS and "exports" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.xdist_group(name))


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    return Exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture
def wrong_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``onnxrep.optimize`` made wrong: every result comes back perturbed."""
    import onnxrep.pipeline as pipeline

    real = pipeline.optimize

    def wrong(model, **kwargs):
        result = real(model, **kwargs)
        result.model = perturbed(result.model)
        return result

    monkeypatch.setattr(pipeline, "optimize", wrong)
