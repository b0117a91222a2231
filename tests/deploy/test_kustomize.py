"""deploy.kustomize: strategic merge as kubectl applies it; every overlay as kubectl renders it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import kustomize
from deploy.kustomize import KustomizeError, merge

from .conftest import DEPLOY, OVERLAYS

KUBECTL_TIMEOUT_S = 60


def _key(resource: kustomize.Resource) -> tuple[str, str, str | None, str]:
    meta = resource["metadata"]
    return (resource["apiVersion"], resource["kind"], meta.get("namespace"), meta["name"])


@pytest.mark.parametrize("directory", [*OVERLAYS, DEPLOY / "base"], ids=lambda p: p.name)
def test_renders_what_kubectl_kustomize_renders(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (no package registry the project uses has one)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_S,
        check=True,
    )
    theirs = {_key(r): r for r in yaml.safe_load_all(result.stdout) if r is not None}
    ours = {_key(r): r for r in kustomize.render(directory)}
    assert sorted(ours) == sorted(theirs)
    for key, resource in ours.items():
        # Lists compared in order too: kubectl keeps an env patch's variables first.
        assert resource == theirs[key], key


def test_maps_merge_and_null_deletes() -> None:
    original = {"a": {"x": 1, "y": 2}, "b": 1}
    assert merge(original, {"a": {"y": 3, "z": 4}, "b": None}) == {"a": {"x": 1, "y": 3, "z": 4}}
    assert original == {"a": {"x": 1, "y": 2}, "b": 1}


def test_lists_of_scalars_are_replaced() -> None:
    assert merge({"command": ["a", "b"]}, {"command": ["c"]}) == {"command": ["c"]}


def test_env_merges_by_name_patch_items_first() -> None:
    original = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "C", "value": "3"},
        ]
    }
    patch = {
        "env": [
            {"name": "D", "value": "4"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "t"}}},
        ]
    }
    assert merge(original, patch)["env"] == [
        {"name": "D", "value": "4"},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
        {"name": "A", "value": "1"},
        {"name": "C", "value": "3"},
    ]


def test_volume_mounts_merge_by_mount_path() -> None:
    original = {"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
    patch = {"volumeMounts": [{"name": "scratch", "mountPath": "/tmp", "readOnly": True}]}
    assert merge(original, patch)["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/tmp", "readOnly": True}
    ]


def test_a_list_of_objects_without_a_rule_is_refused() -> None:
    with pytest.raises(KustomizeError, match="hostAliases"):
        merge({"hostAliases": [{"ip": "1"}]}, {"hostAliases": [{"ip": "2"}]})


def test_patch_directives_are_refused() -> None:
    with pytest.raises(KustomizeError, match=r"\$patch"):
        merge({"spec": {"a": 1}}, {"spec": {"$patch": "replace", "a": 2}})


@pytest.mark.parametrize(
    ("current", "image", "expected"),
    [
        ("cachegw", {"name": "cachegw", "newTag": "1.2"}, "cachegw:1.2"),
        ("cachegw:old", {"name": "cachegw", "newName": "r.example/cg"}, "r.example/cg:old"),
        ("cachegw:old", {"name": "cachegw", "digest": "sha256:ab"}, "cachegw@sha256:ab"),
        ("localhost:5000/cachegw", {"name": "localhost:5000/cachegw", "newTag": "2"}, None),
        ("other:1", {"name": "cachegw", "newTag": "2"}, "other:1"),
    ],
)
def test_images(current: str, image: dict[str, Any], expected: str | None) -> None:
    assert kustomize._new_image(current, image) == (expected or f"{current}:2")


def _write(directory: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump_all(content if isinstance(content, list) else [content]))


CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}


def test_unknown_kustomization_fields_are_refused(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "cm.yaml": CONFIG_MAP,
            "kustomization.yaml": {"resources": ["cm.yaml"], "commonLabels": {"a": "b"}},
        },
    )
    with pytest.raises(KustomizeError, match="commonLabels"):
        kustomize.render(tmp_path)


def test_a_patch_must_find_its_target(tmp_path: Path) -> None:
    patch = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": {}}
    _write(
        tmp_path,
        {
            "cm.yaml": CONFIG_MAP,
            "patch.yaml": patch,
            "kustomization.yaml": {"resources": ["cm.yaml"], "patches": [{"path": "patch.yaml"}]},
        },
    )
    with pytest.raises(KustomizeError, match="0 targets"):
        kustomize.render(tmp_path)


def test_components_and_namespace(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "base/cm.yaml": CONFIG_MAP,
            "base/kustomization.yaml": {"resources": ["cm.yaml"]},
            "comp/extra.yaml": {**CONFIG_MAP, "metadata": {"name": "e"}},
            "comp/patch.yaml": {**CONFIG_MAP, "data": {"from": "component"}},
            "comp/kustomization.yaml": {
                "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                "kind": "Component",
                "resources": ["extra.yaml"],
                "patches": [{"path": "patch.yaml"}],
            },
            "overlay/kustomization.yaml": {
                "namespace": "ns",
                "resources": ["../base"],
                "components": ["../comp"],
            },
        },
    )
    out = kustomize.render(tmp_path / "overlay")
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in out] == [
        ("c", "ns"),
        ("e", "ns"),
    ]
    assert out[0]["data"] == {"from": "component"}
