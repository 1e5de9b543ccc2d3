"""Source adapters -> one manifest table; ``skinhpc.data.sources`` is the public façade.

- common: the columns, the CSV reader, the image index and the layout finder;
- adapters: one reader per dataset kind, each knowing the layouts its distributions ship;
- combine: labels, cross-source duplicates, the grouping check, subsampling, manifest I/O.
"""

from __future__ import annotations

from skinhpc.data.sources.adapters import ADAPTERS, ISIC2019_ONEHOT, ISIC2020_DX
from skinhpc.data.sources.combine import (
    Manifest,
    apply_labels,
    binary_of,
    build_manifest,
    check_grouping,
    gather,
    prepare_manifest,
    read_manifest_csv,
    read_source,
    subsample,
    write_manifest,
)
from skinhpc.data.sources.common import (
    AGE_RANGE,
    COLUMNS,
    IMAGE_EXTS,
    KNOWN_DX,
    LISTED_DUPLICATE,
    SAME_FILE,
    SAME_ID,
    DataError,
    SourceRead,
    index_images,
    read_csv,
)

__all__ = [
    "AGE_RANGE", "ADAPTERS", "COLUMNS", "IMAGE_EXTS", "ISIC2019_ONEHOT", "ISIC2020_DX", "KNOWN_DX", "LISTED_DUPLICATE", "SAME_FILE", "SAME_ID", "DataError",
    "Manifest", "SourceRead", "apply_labels", "binary_of", "build_manifest", "check_grouping",
    "gather", "index_images", "prepare_manifest", "read_csv", "read_manifest_csv", "read_source",
    "subsample", "write_manifest",
]
