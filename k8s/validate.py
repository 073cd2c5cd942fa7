#!/usr/bin/env python3
"""Render the kustomize overlays and validate every document offline against the Kubernetes schemas.

    .venv/bin/python k8s/validate.py                         # every overlay, Kubernetes 1.32
    .venv/bin/python k8s/validate.py -k 1.33 k8s/overlays/prod k8s/yatai/bentodeployment.yaml

A directory argument is rendered with ``kubectl kustomize``; a file argument is read as YAML. Each document
is checked with kubernetes-validate (bundled JSON schemas, strict: unknown fields are errors). Custom
resources (BentoDeployment, BentoRequest, ...) have no bundled schema: they are skipped, with a message.
Exit status 0 when every built-in document validates, 1 otherwise.

The tests in tests/deploy import this file by path (``k8s/`` is not a package) for ``render`` and
``validate_documents``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent
OVERLAYS = [K8S_DIR / "overlays" / "dev", K8S_DIR / "overlays" / "prod"]
YATAI_MANIFEST = K8S_DIR / "yatai" / "bentodeployment.yaml"
# The Kubernetes minor version the manifests target (and are validated against).
KUBERNETES_VERSION = "1.32.0"


class RenderError(RuntimeError):
    """kubectl kustomize failed or is missing."""


def render(path: Path | str) -> list[dict]:
    """Documents of a kustomization directory (via ``kubectl kustomize``) or of a YAML file."""
    path = Path(path)
    if path.is_dir():
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise RenderError("kubectl is not on PATH (it renders the kustomizations offline)")
        proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RenderError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
        text = proc.stdout
    else:
        text = path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def is_builtin(api_version: str) -> bool:
    """True for the core API and the *.k8s.io groups (the ones kubernetes-validate ships schemas for)."""
    if "/" not in api_version:
        return True  # "v1"
    group = api_version.split("/", 1)[0]
    return "." not in group or group.endswith(".k8s.io")


@dataclass
class Result:
    source: str
    kind: str
    name: str
    status: str  # "ok" | "skipped" | "error"
    message: str = ""

    def line(self) -> str:
        text = f"{self.status.upper():7} {self.source}: {self.kind}/{self.name}"
        return f"{text} -- {self.message}" if self.message else text


def validate_documents(docs: Iterable[dict], source: str, version: str = KUBERNETES_VERSION) -> list[Result]:
    import kubernetes_validate

    results = []
    for doc in docs:
        kind = doc.get("kind", "?")
        name = (doc.get("metadata") or {}).get("name", "?")
        api_version = doc.get("apiVersion", "")
        if not is_builtin(api_version):
            results.append(Result(source, kind, name, "skipped",
                                  f"custom resource {api_version}: no bundled schema, not validated"))
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            results.append(Result(source, kind, name, "error", f"{where}: {exc.message}"))
        except kubernetes_validate.SchemaNotFoundError as exc:
            results.append(Result(source, kind, name, "error", exc.message))
        else:
            results.append(Result(source, kind, name, "ok"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--kubernetes-version", default=KUBERNETES_VERSION,
                        help=f"Kubernetes version whose schemas to use (default {KUBERNETES_VERSION})")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors, skips and the summary")
    parser.add_argument("paths", nargs="*", type=Path,
                        help="kustomization directories or YAML files (default: every overlay and the Yatai manifest)")
    args = parser.parse_args(argv)
    paths = args.paths or [*OVERLAYS, YATAI_MANIFEST]

    results: list[Result] = []
    for path in paths:
        try:
            docs = render(path)
        except RenderError as exc:
            print(f"ERROR   {exc}", file=sys.stderr)
            return 1
        if not docs:
            print(f"ERROR   {path}: no documents", file=sys.stderr)
            return 1
        results += validate_documents(docs, str(path), args.kubernetes_version)

    for result in results:
        if result.status != "ok" or not args.quiet:
            print(result.line())
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "error")}
    print(f"Kubernetes {args.kubernetes_version} schemas (strict): {counts['ok']} valid, "
          f"{counts['skipped']} skipped (custom resources), {counts['error']} invalid")
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
