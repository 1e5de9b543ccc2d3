"""The data layer: source adapters -> one manifest, grouped splits, audit, preprocessing cache.

Kept import-light on purpose: training workers import ``skinhpc.data.prepare.load_table``
without paying for imagehash, OpenCV or the download code.
"""

from __future__ import annotations

from skinhpc.data.sources import COLUMNS, DataError

__all__ = ["COLUMNS", "DataError"]
