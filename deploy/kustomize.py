"""A renderer for the part of kustomize that ``deploy/`` uses, for machines without kubectl.

``kubectl kustomize`` is the reference: where kubectl is installed, tests/deploy renders every
overlay with both and requires the same objects. kubectl cannot be installed from the package
registries the project uses (Debian's kubernetes-client is 1.20, whose kustomize 2.0 predates
components and ``patches``), so ``make test`` renders with this module everywhere.

What it does, in kustomize's order: ``resources`` (files and directories), ``components``,
then strategic-merge ``patches`` (by the patch's kind and name), ``namespace`` and ``images``.
Anything else in a kustomization is refused rather than ignored: a field rendered wrong here
would be validated and tested as if it were right.

    python -m deploy.kustomize deploy/overlays/production    # the objects, as a YAML stream
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "images"}
KINDS = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "Component": "kustomize.config.k8s.io/v1alpha1",
}
# Kubernetes merges these lists of objects item by item, by the key named (the patchMergeKey of
# the API's schema); every other list is replaced whole by the patch's.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# Lists of objects that a patch replaces whole, named so that a list of objects this module has
# no rule for is an error, not a guess.
REPLACED = {"metrics", "policies", "endpoints", "tolerations", "envFrom", "items", "rules"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}


class KustomizeError(Exception):
    """A kustomization this renderer cannot render exactly as kustomize would."""


def render(directory: Path) -> list[Resource]:
    """The objects a kustomization directory builds, in the order its resources list them."""
    kustomization = _load(directory, expect="Kustomization")
    return _build(directory, kustomization)


def _load(directory: Path, *, expect: str) -> dict[str, Any]:
    path = directory / KUSTOMIZATION
    if not path.is_file():
        raise KustomizeError(f"{directory}: no {KUSTOMIZATION}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise KustomizeError(f"{path}: not a mapping")
    unknown = set(data) - FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not apply: {sorted(unknown)}")
    kind = data.get("kind", "Kustomization")
    if kind != expect or data.get("apiVersion", KINDS[kind]) != KINDS[kind]:
        raise KustomizeError(f"{path}: expected a {expect} ({KINDS[expect]})")
    return data


def _build(directory: Path, kustomization: dict[str, Any]) -> list[Resource]:
    resources = _resources(directory, kustomization.get("resources", []))
    for entry in kustomization.get("components", []):
        # A component adds its resources, then its transformers act on everything so far.
        component_dir = (directory / entry).resolve()
        component = _load(component_dir, expect="Component")
        if component.get("components"):
            raise KustomizeError(f"{component_dir}: components within components")
        own = _resources(component_dir, component.get("resources", []))
        resources = _apply(component_dir, component, resources + own)
    return _apply(directory, kustomization, resources)


def _resources(directory: Path, entries: list[str]) -> list[Resource]:
    out: list[Resource] = []
    for entry in entries:
        target = (directory / entry).resolve()
        out.extend(render(target) if target.is_dir() else _documents(target))
    return out


def _apply(
    directory: Path, kustomization: dict[str, Any], resources: list[Resource]
) -> list[Resource]:
    out = copy.deepcopy(resources)
    for entry in kustomization.get("patches", []):
        for patch in _patch_documents(directory, entry):
            _patch(out, patch)
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in out:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for resource in out:
            _set_image(resource, image)
    return out


def _documents(path: Path) -> list[Resource]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            raise KustomizeError(f"{path}: every document needs apiVersion, kind and metadata")
    return docs


def _patch_documents(directory: Path, entry: dict[str, Any]) -> list[Resource]:
    if set(entry) == {"path"}:
        return _documents(directory / entry["path"])
    if set(entry) == {"patch"}:
        return [yaml.safe_load(entry["patch"])]
    raise KustomizeError(f"{directory}: a patch is a path or an inline patch, got {sorted(entry)}")


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _patch(resources: list[Resource], patch: Resource) -> None:
    name = patch["metadata"]["name"]
    matches = [
        r
        for r in resources
        if r["kind"] == patch["kind"]
        and r["metadata"]["name"] == name
        and _group(r["apiVersion"]) == _group(patch["apiVersion"])
    ]
    if len(matches) != 1:
        raise KustomizeError(f"patch {patch['kind']}/{name}: {len(matches)} targets, expected 1")
    merged = merge(matches[0], patch)
    matches[0].clear()
    matches[0].update(merged)


def merge(original: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge patch: maps merged, null deletes, lists by ``MERGE_KEYS``."""
    if isinstance(patch, dict) and isinstance(original, dict):
        if any(key.startswith("$") for key in patch):
            raise KustomizeError(f"{field}: patch directives ($patch, ...) are not applied here")
        out = dict(original)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(original, list):
        if not any(isinstance(item, dict) for item in patch + original):
            return copy.deepcopy(patch)
        if field in MERGE_KEYS:
            return _merge_list(original, patch, field, MERGE_KEYS[field])
        if field in REPLACED:
            return copy.deepcopy(patch)
        raise KustomizeError(f"{field}: no rule for merging this list (MERGE_KEYS or REPLACED)")
    return copy.deepcopy(patch)


def _merge_list(original: list[Any], patch: list[Any], field: str, key: str) -> list[Any]:
    # kustomize's order (kyaml's merge2): the patch's items first, in its order, each merged
    # into the original's item of the same key, then the original's other items in theirs.
    # So a variable that an env patch adds comes before the original variables.
    by_key = {item.get(key): item for item in original}
    out = []
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"{field}: every item of the patch needs {key}")
        old = by_key.get(item[key])
        out.append(copy.deepcopy(item) if old is None else merge(old, item, field))
    patched = {item[key] for item in patch}
    out.extend(copy.deepcopy(item) for item in original if item.get(key) not in patched)
    return out


def _set_image(node: Any, image: dict[str, Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                container["image"] = _new_image(container["image"], image)
        else:
            _set_image(value, image)


def _new_image(current: str, image: dict[str, Any]) -> str:
    name, _, digest = current.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    if name != image["name"]:
        return current
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = str(image.get("newTag", tag))
    return f"{name}:{tag}" if tag else (f"{name}@{digest}" if digest else name)


def dump(resources: list[Resource]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.kustomize", description=__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(dump(render(args.directory)))
    except KustomizeError as exc:
        print(f"deploy.kustomize: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
