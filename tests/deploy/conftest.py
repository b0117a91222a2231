"""The overlays, rendered once per session (each render reads a few dozen small files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import kustomize

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.parent for p in (DEPLOY / "overlays").glob(f"*/{kustomize.KUSTOMIZATION}"))


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[kustomize.Resource]]:
    return {overlay.name: kustomize.render(overlay) for overlay in OVERLAYS}
