"""The Prometheus Operator's schemas for ServiceMonitor and PrometheusRule, vendored.

kubernetes-validate knows only the built-in kinds. The two CRDs' ``openAPIV3Schema`` are kept
in ``deploy/schemas/`` (descriptions dropped, which are nine tenths of the bytes), each with the
release and file it was taken from. To take them from a newer release, pass its CRD files:

    python -m deploy.crds --operator-version 0.93.0 \\
        .../example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml \\
        .../example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml

What the API server adds beyond the schema is not checked here: CEL rules
(``x-kubernetes-validations``) and formats. Unknown fields are refused, as
``kubectl apply --validate=strict`` does, unless the schema preserves them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
SOURCE = "https://github.com/prometheus-operator/prometheus-operator"
KINDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


def strip_descriptions(node: Any) -> Any:
    """The schema without its prose; a property that is itself called description is kept."""
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def extract(crd: dict[str, Any], *, operator_version: str, path: str) -> dict[str, Any]:
    """The vendored form of one CRD: where it came from, and its storage version's schema."""
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    return {
        "source": SOURCE,
        "operatorVersion": operator_version,
        "file": path,
        "apiVersion": f"{spec['group']}/{version['name']}",
        "kind": spec["names"]["kind"],
        "schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
    }


def closed(node: Any) -> Any:
    """Objects with declared properties refuse others, as the API server's pruning would."""
    if isinstance(node, list):
        return [closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load(kind: str) -> dict[str, Any]:
    vendored: dict[str, Any] = json.loads((SCHEMAS / f"{KINDS[kind]}.json").read_text())
    return vendored


def errors(resource: dict[str, Any]) -> list[str]:
    """What is wrong with a ServiceMonitor or PrometheusRule, one line a problem."""
    vendored = load(resource["kind"])
    if resource.get("apiVersion") != vendored["apiVersion"]:
        return [f"apiVersion {resource.get('apiVersion')!r}, expected {vendored['apiVersion']!r}"]
    validator = jsonschema.Draft7Validator(closed(vendored["schema"]))
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(resource)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.crds", description=__doc__)
    parser.add_argument("--operator-version", required=True, help="the release, e.g. 0.93.0")
    parser.add_argument("crd_files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for crd_file in args.crd_files:
        crd = yaml.safe_load(crd_file.read_text())
        path = "/".join(crd_file.parts[-3:])
        vendored = extract(crd, operator_version=args.operator_version, path=path)
        out = SCHEMAS / f"{crd['spec']['names']['plural']}.json"
        out.write_text(json.dumps(vendored, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
