#!/usr/bin/env python3
"""Checks the Helm chart (deploy/helm/wick) without a cluster and without a `helm` binary:

- `helm lint --strict` and `helm template`, through Helm's own Go SDK as published on PyPI
  (`helm-python-sdk`, libhelm_c), for the default values and for values-gie.yaml;
- the rendered manifests equal deploy/k8s/ (`--write` regenerates them);
- every object is valid and strict (no unknown fields): built-in kinds against the Kubernetes
  OpenAPI schemas of `kubernetes-validate` (PyPI; kubeconform has no PyPI or npm distribution),
  the InferencePool, HTTPRoute and ServiceMonitor against the CRD schemas vendored in
  deploy/crds/ (GIE v1.4.0, Gateway API v1.6.1, prometheus-operator v0.93.0).

Usage: scripts/k8s-check.py [--write]
"""

import copy
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "wick"
OUT = ROOT / "deploy" / "k8s"
CRDS = ROOT / "deploy" / "crds"
KUBE_VERSION = "1.33.0"
RENDERINGS = {"wick.yaml": None, "wick-gie.yaml": CHART / "values-gie.yaml"}


def strict(schema):
    """A CRD schema with unknown fields forbidden, as kubeconform -strict does."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    # metadata is checked by the API server's ObjectMeta, not the CRD.
    s.get("properties", {}).get("metadata", {}).pop("additionalProperties", None)
    return s


def crd_schemas():
    out = {}
    for f in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = strict(v["schema"]["openAPIV3Schema"])
    return out


def render(values_file):
    values = yaml.safe_load(values_file.read_text()) if values_file else {}
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if problems:
        sys.exit(f"helm lint ({values_file or 'default values'}): {problems}")
    chart = helm.Chart.load(str(CHART))
    try:
        rendered = chart.render(values, name="wick", namespace="default", is_install=True)
    finally:
        chart.close()
    parts = []
    for path in sorted(rendered):
        text = rendered[path].strip()
        if path.endswith(".yaml") and text and any(line and not line.startswith("#") for line in text.splitlines()):
            parts.append(f"# Source: {path}\n{text}\n")
    return "---\n".join(parts)


def validate(name, text, crds):
    count = 0
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        count += 1
        key = (doc["apiVersion"], doc["kind"])
        where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
        if key in crds:
            try:
                jsonschema.validate(doc, crds[key])
            except jsonschema.ValidationError as e:
                sys.exit(f"{where}: {e.message} at {list(e.absolute_path)}")
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                sys.exit(f"{where}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                sys.exit(f"{where}: no schema for {key} (vendor its CRD into deploy/crds)")
    return count


def main():
    write = "--write" in sys.argv
    crds = crd_schemas()
    OUT.mkdir(exist_ok=True)
    for name, values in RENDERINGS.items():
        text = ("# Rendered from deploy/helm/wick by scripts/k8s-check.py --write; do not edit.\n"
                f"# helm template wick deploy/helm/wick{' -f ' + str(values.relative_to(ROOT)) if values else ''}\n"
                + render(values))
        n = validate(name, text, crds)
        target = OUT / name
        if write:
            target.write_text(text)
        elif not target.exists() or target.read_text() != text:
            sys.exit(f"{target} is out of date with the chart: run scripts/k8s-check.py --write")
        print(f"{name}: helm lint clean, {n} objects valid (strict)")


if __name__ == "__main__":
    main()
