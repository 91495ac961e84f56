"""What a dataset's metadata allows: the choices the notebooks and the demo make per dataset.

The notebooks run on any :class:`cliptk.ReIdDataset` — the embedded players (captions, cameras,
``colour``/``team``/``number`` columns), DeepSportRadar, Market-1501, a CSV manifest with its own
columns, or a folder per identity (none of these). Each step that needs some metadata asks here
what to use, and when the dataset lacks it the step is skipped with one short printed line, so a
notebook never fails for want of a column:

* :func:`with_eval_splits` — the query/gallery splits, held out with
  :meth:`cliptk.ReIdDataset.holdout` when the dataset has none (a folder per identity);
* :func:`color_by` and :func:`breakdown_by` — the column to colour a plot or break mAP down by;
* :func:`number_column`, :func:`number_prompts` and :func:`probe_numbers` — zero-shot
  shirt-number reading, on any dataset whose table has a number column;
* :func:`category_columns` — the free metadata columns worth grouping by;
* :func:`samples` — a look at the images (the players' look-alike grid when the data is theirs).

Example:
    >>> import pandas as pd
    >>> from cliptk.data import ReIdDataset
    >>> ds = ReIdDataset("imgs", pd.DataFrame({"path": [f"{i}.jpg" for i in range(4)], "pid": [1, 1, 2, 2]}))
    >>> color_by(ds)
    colour by 'pid': the dataset has no 'colour', 'team' column
    'pid'
    >>> number_column(ds) is None
    True
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .data import ReIdDataset
from .data.dataset import REQUIRED_COLUMNS
from .evaluate import zero_shot_probe
from .metrics import ProbeResult
from .synthetic import CAPTION_TEMPLATE, NUMBER_PROMPT

__all__ = ["note", "with_eval_splits", "batch_size_for", "category_columns", "color_by", "breakdown_by", "number_column",
           "number_prompts", "probe_numbers", "has_captions", "samples", "NUMBER_COLUMNS", "HOLDOUT"]

#: column names read as a shirt number, first match wins (any integer column 0..99 of these names)
NUMBER_COLUMNS = ("number", "shirt_number", "jersey_number", "jersey", "shirt")
#: how :func:`with_eval_splits` holds out identities: :meth:`cliptk.ReIdDataset.holdout` arguments
HOLDOUT = {"ids": 0.2, "seed": 0, "queries_per_id": 1}
#: columns that are bookkeeping, not metadata to group by
_NOT_METADATA = set(REQUIRED_COLUMNS) | {"identity", "index", "file", "filename"}


def note(message: str) -> None:
    """Print one short line saying what a step did instead (the notebooks' and demo's convention)."""
    print(message, flush=True)


# ------------------------------------------------------------------------------ splits
def with_eval_splits(dataset: ReIdDataset, *, query: str = "query", gallery: str = "gallery",
                     quiet: bool = False, **holdout) -> ReIdDataset:
    """``dataset`` itself when it has a ``query`` or ``gallery`` split; otherwise
    ``dataset.holdout(**HOLDOUT)`` (20 % of the identities, one query image each, seed 0;
    ``holdout`` keywords change it), saying so in one line.

    Deterministic, so every notebook, :func:`cliptk.recipes.finetuned` and the demo hold out the
    same identities of the same data.

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset("imgs", pd.DataFrame({"path": [f"{i}.jpg" for i in range(20)], "pid": [i // 4 for i in range(20)]}))
        >>> sorted(with_eval_splits(ds).split_names)
        no query/gallery split: held out 1 of 5 identities as query/gallery (dataset.holdout(ids=0.2, seed=0, queries_per_id=1))
        ['gallery', 'query', 'train']
    """
    if {query, gallery} & set(dataset.split_names):  # one of them only: evaluation says which is missing
        return dataset
    kw = {**HOLDOUT, **holdout}
    ids = kw["ids"]
    n_ids = int(len(set(dataset.pids[dataset.pids >= 0].tolist())))
    out = dataset.holdout(**kw)
    held = int(len(set(out.subset(query).pids.tolist()))) if query in out.split_names else 0
    if not quiet:
        args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        note(f"no query/gallery split: held out {held} of {n_ids} identities as query/gallery (dataset.holdout({args}))"
             if held else f"no query/gallery split and none could be held out (ids={ids!r})")
    return out


def batch_size_for(batch_size: int, pids, *, multiple: int = 1, what: str = "batch_size", quiet: bool = False) -> int:
    """``batch_size`` capped at the number of identities in ``pids`` (labelled, ``pid >= 0``),
    rounded down to a ``multiple`` (e.g. 2 for P x K batches): a batch of unique-identity pairs
    cannot be larger. One line says when it was lowered.

    Example:
        >>> batch_size_for(32, [1, 1, 2, 2, 3, 3])
        batch_size 32 -> 3 (the training data has 3 identities)
        3
    """
    n_ids = len({int(p) for p in np.asarray(pids).tolist() if int(p) >= 0})
    if 2 <= n_ids < batch_size:
        size = max(multiple, n_ids - n_ids % multiple)
        if not quiet:
            note(f"{what} {batch_size} -> {size} (the training data has {n_ids} identities)")
        return size
    return batch_size


# ------------------------------------------------------------------------------ columns
def category_columns(dataset: ReIdDataset, max_categories: int = 50) -> list[str]:
    """The free metadata columns (not ``path``/``pid``/``camid``/``split``/``caption``) with 2 to
    ``max_categories`` distinct values, in table order: what a plot can colour by and a breakdown
    can group by.

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset("i", pd.DataFrame({"path": list("abcd"), "pid": [1, 1, 2, 2], "team": list("xxyy"), "w": [1, 2, 3, 4]}))
        >>> category_columns(ds, max_categories=3)
        ['team']
    """
    out = []
    for col in dataset.table.columns:
        if col in _NOT_METADATA:
            continue
        n = dataset.table[col].nunique(dropna=True)
        if 2 <= n <= max_categories:
            out.append(col)
    return out


def _first(dataset: ReIdDataset, prefer: Sequence[str]) -> str | None:
    return next((c for c in prefer if c in dataset.table.columns and dataset.table[c].notna().any()), None)


def color_by(dataset: ReIdDataset, prefer: Sequence[str] = ("colour", "team"), fallback: str = "pid",
             quiet: bool = False) -> str:
    """The column to colour an embedding plot by: the first of ``prefer`` the dataset has, else
    ``fallback`` (identities), with one line saying so."""
    col = _first(dataset, prefer)
    if col is None:
        if not quiet:
            note(f"colour by {fallback!r}: the dataset has no {', '.join(map(repr, prefer))} column")
        return fallback
    return col


def breakdown_by(dataset: ReIdDataset, prefer: Sequence[str] = ("colour", "team"), quiet: bool = False) -> str:
    """The column to break mAP down by: the first of ``prefer``, else another metadata column
    (:func:`category_columns`), else the camera when known, else ``"pid"`` (one line says which)."""
    col = _first(dataset, prefer)
    if col is not None:
        return col
    others = category_columns(dataset)
    col = others[0] if others else ("camid" if dataset.has_cameras else "pid")
    if not quiet:
        note(f"breakdown by {col!r}: the dataset has no {', '.join(map(repr, prefer))} column")
    return col


def has_captions(dataset: ReIdDataset) -> bool:
    """Whether any image has a caption."""
    return any(c is not None and str(c).strip() for c in dataset.captions)


# ------------------------------------------------------------------------------ shirt numbers
def _numbers(values: pd.Series) -> pd.Series | None:
    """``values`` as floats with NaN where missing (None, NaN, empty text), or None when a known
    value is not an integer (a CSV manifest reads every column as text)."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    missing = text.isin(["", "nan", "NaN", "None", "<NA>"])
    num = pd.to_numeric(text.where(~missing), errors="coerce")
    known = ~missing
    if not known.any() or num[known].isna().any() or (num[known] != num[known].round()).any():
        return None
    return num


def number_column(dataset: ReIdDataset, names: Sequence[str] = NUMBER_COLUMNS) -> str | None:
    """The column holding shirt numbers: the first of ``names`` whose known values are integers
    (missing values are allowed), or None."""
    return next((c for c in names if c in dataset.table.columns and _numbers(dataset.table[c]) is not None), None)


def number_prompts(dataset: ReIdDataset, column: str = "number") -> dict[int, list[str]]:
    """Text prompts per shirt number, for :func:`cliptk.zero_shot_probe`.

    Classes are 0..99 when every number is in that range (chance 1 %), else the numbers present.
    With a ``colour`` column the captions' own template is averaged over the dataset's colours
    (:data:`cliptk.synthetic.CAPTION_TEMPLATE`, what the bundled model was trained on); without,
    :data:`cliptk.synthetic.NUMBER_PROMPT` ("a photo of a basketball player with number {n}").

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset("i", pd.DataFrame({"path": ["a", "b"], "pid": [1, 2], "number": [7, 23]}))
        >>> number_prompts(ds)[7]
        ['a photo of a basketball player with number 7']
    """
    values = _numbers(dataset.table[column])
    values = pd.Series([], dtype=int) if values is None else values.dropna().astype(int)
    classes = range(100) if len(values) and values.between(0, 99).all() else sorted(set(values.tolist()))
    if "colour" in dataset.table.columns and dataset.table["colour"].notna().any():
        colours = sorted(dataset.table["colour"].dropna().astype(str).unique())
        return {n: [CAPTION_TEMPLATE.format(colour=c, number=n) for c in colours] for n in classes}
    return {n: [NUMBER_PROMPT.format(number=n)] for n in classes}


def probe_numbers(model, dataset: ReIdDataset, *, column: str | None = None, cache_dir=None,
                  progress: bool = True) -> ProbeResult | None:
    """Zero-shot shirt-number reading of ``dataset``'s images (:func:`cliptk.zero_shot_probe`
    with :func:`number_prompts`), or None with one line saying why it was skipped: the model
    has no text tower (an image-only or fine-tuned tower), or the dataset has no number column.

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset("i", pd.DataFrame({"path": ["a"], "pid": [1]}))
        >>> probe_numbers(None, ds) is None
        skipped the shirt-number probe: the dataset has no number column (one of 'number', 'shirt_number', 'jersey_number', 'jersey', 'shirt')
        True
    """
    column = column or number_column(dataset)
    if column is None:
        note("skipped the shirt-number probe: the dataset has no number column "
             f"(one of {', '.join(map(repr, NUMBER_COLUMNS))})")
        return None
    if getattr(model, "image_only", False) or getattr(model, "tokenizer", None) is None:
        note(f"skipped the shirt-number probe: {getattr(model, 'name', 'the model')} has no text tower "
             "(load it with image_only=False)")
        return None
    numbers = _numbers(dataset.table[column])
    if numbers is None:
        note(f"skipped the shirt-number probe: column {column!r} does not hold integers")
        return None
    data = dataset.select(numbers.notna().to_numpy())
    table = data.table.copy()
    table[column] = numbers[numbers.notna()].astype(int).to_numpy()
    data = ReIdDataset(data.root, table, name=data.name, on_error=data.on_error, target_size=data.target_size)
    return zero_shot_probe(model, data, column, number_prompts(data, column), cache_dir=cache_dir, progress=progress)


# ------------------------------------------------------------------------------ a look at the images
def samples(dataset: ReIdDataset, n: int = 16, *, height: int = 128, per_id: int = 4, seed: int = 0) -> Image.Image:
    """A grid of ``n`` images, ``per_id`` per identity, labelled with the identity (name or pid).

    The embedded players get :func:`cliptk.samples_grid` (look-alike pairs side by side); any
    other dataset a plain grid of random identities from its first split.

    Example:
        >>> import tempfile, pandas as pd
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp()); Image.new("RGB", (20, 40), "red").save(root / "a.png")
        >>> samples(ReIdDataset(root, pd.DataFrame({"path": ["a.png"], "pid": [1]})), n=4).mode
        'RGB'
    """
    if {"colour", "number"} <= set(dataset.table.columns) and (dataset.root / "manifest.csv").is_file():
        from .synthetic import samples_grid

        return samples_grid(dataset.root, n=n, per_id=per_id)
    rng = np.random.default_rng(seed)
    split = dataset.split_names[0] if len(dataset) else None
    part = dataset.table[(dataset.table["split"] == split) & (dataset.table["pid"] >= 0)]
    pids = sorted(set(part["pid"].tolist()))
    rng.shuffle(pids)
    rows = [i for p in pids for i in part.index[part["pid"] == p][:per_id].tolist()][:n]
    cols = min(len(rows), 2 * per_id) or 1
    tiles = []
    for i in rows:
        im = dataset.image(int(i))
        if im is None:
            continue
        w = max(1, round(im.width * height / max(im.height, 1)))
        row = dataset.table.iloc[int(i)]
        tiles.append((im.resize((min(w, 2 * height), height)), row.get("identity", row["pid"])))
    cw = max([t.width for t, _ in tiles] or [height // 2])
    pad, text_h = 4, 14
    grid = Image.new("RGB", (cols * (cw + pad) + pad, math.ceil(max(len(tiles), 1) / cols) * (height + text_h + pad) + pad),
                     (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    for k, (tile, pid) in enumerate(tiles):
        r, c = divmod(k, cols)
        x, y = pad + c * (cw + pad), pad + r * (height + text_h + pad)
        grid.paste(tile, (x, y))
        draw.text((x + 2, y + height + 1), str(pid)[:24], fill=(0, 0, 0))
    return grid
