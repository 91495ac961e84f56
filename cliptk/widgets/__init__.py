"""Jupyter widgets: the embedding explorer, the Score-CAM pair picker and the ranked-results browser.

They need ipywidgets and plotly's FigureWidget, so nothing in cliptk imports this package at module
top: ``ct.Explorer`` and friends load it on first use, and ``import cliptk`` (every ``torchrun``
worker) stays free of widget libraries.
"""
from __future__ import annotations

import importlib

__all__ = ["Explorer", "CamPairPicker", "RankBrowser"]

_WHERE = {"Explorer": ".explorer", "CamPairPicker": ".cam_picker", "RankBrowser": ".rank_browser"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
