"""Timbral serving: BentoML services, Redis cache, settings and the registry → model-store importer.

``bentoml serve service:Timbral`` works because ``Timbral`` (and ``TimbralModel``) are resolved lazily here
(PEP 562): importing ``service.settings`` or ``service.importer`` does not import BentoML's serving stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Timbral", "TimbralModel"]


def __getattr__(name: str) -> Any:
    if name == "Timbral":
        from service.service import Timbral

        return Timbral
    if name == "TimbralModel":
        from service.model_service import TimbralModel

        return TimbralModel
    raise AttributeError(f"module 'service' has no attribute {name!r}")
