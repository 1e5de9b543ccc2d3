"""Grouped, stratified train/val/test splits: no lesion or patient on two sides.

Image-level splits of HAM10000 put views of one lesion in train and test and inflate AUC by 1-2
points (the peer projects' main fault), so every split here moves whole groups.  Groups are
stratified by (label, dx) so that the class mix of each split matches the whole; within each
stratum groups are dealt, in a seeded random order, to the split furthest below its target
image count, which keeps ratios within a point or two even with a few large groups.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from skinhpc.config import SplitSpec
from skinhpc.data.sources import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Column ``load_table`` adds: how many images the row's manifest group (patient, else lesion, else
# the image alone) has in the whole manifest (model.metadata.images_per_patient reads it).
GROUP_IMAGES = "group_images"


def group_image_counts(manifest: pd.DataFrame) -> np.ndarray:
    """Images of each row's ``group`` in ``manifest``: pass the whole manifest (train, val and
    test together, as the SIIM-ISIC 2020 winners counted), so a row's count does not depend on
    which split or fold it sits in."""
    group = manifest["group"].astype(str)
    return group.map(group.value_counts()).to_numpy(dtype=np.int64)


def resolve_groups(manifest: pd.DataFrame, group_by: str) -> pd.Series:
    """The grouping key per image; errors when the requested key is not in the data."""
    group = manifest["group"].astype(str)
    if group_by == "image":
        log.warning("split grouped by image: views of one lesion may sit in two splits (leakage)")
        return "image:" + manifest["image_id"].astype(str)
    if group_by in ("lesion", "patient"):
        ok = group.str.startswith(f"{group_by}:")
        if not ok.all():
            i = ok.idxmin()
            raise DataError(
                f"data.split.group_by={group_by}: image {manifest['image_id'][i]!r} has group "
                f"{group[i]!r} ({int((~ok).sum())} rows without a {group_by} id); use group_by=auto"
            )
        return group
    n_image = int(group.str.startswith("image:").sum())
    if n_image:
        log.warning(
            "%d of %d images have no lesion/patient id and are split one by one (may leak)",
            n_image, len(group),
        )
    return group


def commonest(keys: np.ndarray, values: np.ndarray) -> pd.Series:
    """Per key (sorted), its most frequent value: what ``groupby(key)[value].agg(lambda s:
    s.value_counts().index[0])`` gives, with one sort instead of a Python call per group (that
    lambda was 29 s of a 128k-image split).  A group whose top count is tied is still asked
    ``value_counts`` itself: pandas breaks such a tie by numpy's unstable quicksort, an order no
    sort key reproduces, and a split must not change under an existing job."""
    df = pd.DataFrame({"k": keys, "v": values})
    c = df.groupby(["k", "v"], sort=True).size().rename("n").reset_index()
    c = c.sort_values(["k", "n"], ascending=[True, False], kind="stable")
    top = c.drop_duplicates("k").set_index("k")
    second = c[c["k"].duplicated()].drop_duplicates("k").set_index("k")["n"]
    tied = second.index[second.to_numpy() == top.loc[second.index, "n"].to_numpy()]
    out = top["v"].copy()
    if len(tied):
        rows = pd.Index(tied).get_indexer(keys) >= 0  # hashed: np.isin on strings is N x ties
        out.loc[tied] = (pd.Series(values[rows]).groupby(keys[rows], sort=True)
                         .agg(lambda s: s.value_counts().index[0]).loc[tied].to_numpy())
    return out


def _group_table(manifest: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """One row a group: its stratum (highest label, commonest dx) and image count."""
    keys = groups.to_numpy()
    df = pd.DataFrame({"group": keys, "label": manifest["label"].to_numpy()})
    g = df.groupby("group", sort=True).agg(label=("label", "max"), n=("label", "size"))
    g.insert(1, "dx", commonest(keys, manifest["dx"].to_numpy()).reindex(g.index))
    g["stratum"] = g["label"].astype(str) + "/" + g["dx"]
    return g


def _deal(g: pd.DataFrame, fractions: list[float], rng: np.random.Generator) -> pd.Series:
    """Per stratum, give each group (random order) to the split with the largest deficit."""
    names: list[object] = []
    picks: list[int] = []
    fr = np.asarray(fractions, dtype=float)
    for _, part in g.groupby("stratum", sort=True):
        order = part.iloc[rng.permutation(len(part))]
        total = float(order["n"].sum())
        have = np.zeros(len(fr))
        for name, n in zip(order.index, order["n"].to_numpy(), strict=True):
            deficit = fr * (total) - have
            deficit[fr == 0] = -np.inf
            k = int(np.argmax(deficit))
            have[k] += n
            names.append(name)
            picks.append(k)
    # built once from lists: a label assignment per group into a Series was the other slow part
    return pd.Series(picks, index=names, dtype=np.int64).reindex(g.index)


def holdout(manifest: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    groups = resolve_groups(manifest, spec.group_by)
    g = _group_table(manifest, groups)
    k = _deal(g, spec.fractions, np.random.default_rng(spec.seed))
    split_of_group = pd.Series(np.asarray(SPLITS, dtype=object)[k.to_numpy()], index=k.index)
    return _frame(manifest, groups, split_of_group)


def kfold(manifest: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """Test part held out first (same deal as holdout), then StratifiedGroupKFold on the rest.

    Every non-test row gets its fold (``split`` "train", ``fold`` 0..k-1; test rows fold -1):
    the file holds all folds, and each member's train/val view is derived from it by
    :func:`member_view`, so no member's split is ever dealt again."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = resolve_groups(manifest, spec.group_by)
    g = _group_table(manifest, groups)
    rng = np.random.default_rng(spec.seed)
    test_frac = spec.fractions[2]
    k = _deal(g, [1 - test_frac, 0.0, test_frac], rng)
    split_of_group = pd.Series(np.where(k.to_numpy() == 2, "test", "train"), index=k.index, dtype=object)
    rest = groups.map(split_of_group) != "test"
    sgkf = StratifiedGroupKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
    idx = np.flatnonzero(rest.to_numpy())
    y = manifest["label"].to_numpy()[idx]
    if len(np.unique(groups.to_numpy()[idx])) < spec.folds:
        raise DataError(f"data.split.folds={spec.folds}: only {len(idx)} groups outside test")
    _check_class_counts(manifest.iloc[idx], spec.folds)
    fold_of_group = pd.Series(-1, index=split_of_group.index, dtype=int)
    for f, (_, val_idx) in enumerate(sgkf.split(idx, y, groups.to_numpy()[idx])):
        fold_of_group[list(set(groups.to_numpy()[idx][val_idx]))] = f
    out = _frame(manifest, groups, split_of_group)
    out["fold"] = groups.map(fold_of_group).to_numpy()
    return out


def _check_class_counts(rows: pd.DataFrame, folds: int) -> None:
    """StratifiedGroupKFold refuses (a bare ValueError) when every class has fewer images than
    folds and only warns when some do: say which class, its count and the key, in one line."""
    counts = rows["label"].value_counts()
    name = rows.groupby("label")["dx"].agg(lambda s: s.value_counts().index[0])
    if (counts < folds).all():
        big = counts.idxmax()
        raise DataError(
            f"data.split.folds={folds}: every class has fewer images outside test than folds; the "
            f"largest, label {big} ({name[big]}), has {counts[big]}: set data.split.folds <= {counts[big]} "
            f"or add images")
    for label, n in counts[counts < folds].items():
        log.warning("data.split.folds=%d: class label %s (%s) has %d image(s) outside test, so %d "
                    "fold(s) validate without it", folds, label, name[label], n, folds - n)


def member_view(table: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """A member's train/val/test rows: k-fold: its fold (``spec.fold``) is val, the other folds
    train, test stays test; holdout: the table as it is.  The one place a fold becomes a split."""
    if spec.method != "kfold":
        return table
    if "fold" not in table.columns:
        raise DataError("data.split.method=kfold but splits.csv has no fold column; prepare the job again")
    cv = table["split"] != "test"
    out = table.copy()
    out.loc[cv, "split"] = np.where(out.loc[cv, "fold"].astype(int) == spec.fold, "val", "train")
    return out


def _frame(manifest: pd.DataFrame, groups: pd.Series, split_of_group: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": manifest["image_id"].to_numpy(),
        "split": groups.map(split_of_group).to_numpy(),
        "group": groups.to_numpy(),
    })


def make_splits(manifest: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """splits.csv rows (image_id, split, group; kfold adds fold), deterministic from ``spec.seed``."""
    df = kfold(manifest, spec) if spec.method == "kfold" else holdout(manifest, spec)
    if df["split"].isna().any() or not df["split"].isin(SPLITS).all():  # pragma: no cover
        raise AssertionError("split assignment left images without a split")
    return df


def class_table(manifest: pd.DataFrame, splits: pd.DataFrame, column: str = "label") -> pd.DataFrame:
    """Counts per split x class (rows: splits, k-fold's folds, plus 'all'), for logs, the CLI and tests."""
    cols = ["image_id", "split"] + (["fold"] if "fold" in splits.columns else [])
    df = manifest[["image_id", column]].merge(splits[cols], on="image_id")
    if "fold" in df.columns:
        df["split"] = np.where(df["split"] == "test", "test", "fold " + df["fold"].astype(str))
    t = pd.crosstab(df["split"], df[column])
    t.loc["all"] = t.sum()
    folds = sorted(r for r in t.index if str(r).startswith("fold "))
    return t.reindex([s for s in (*SPLITS, *folds, "all") if s in t.index])
