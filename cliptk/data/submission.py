"""Write (and read back) a distance matrix in the DeepSportRadar re-id challenge's CSV format.

The challenge (``DeepSportradar/player-reidentification-challenge``, scored on EvalAI) takes a
``.csv`` file holding the pairwise query-by-gallery distance matrix with one extra row and column:
``(m + 1) x (n + 1)`` for ``m`` queries and ``n`` gallery images. The first row is ``0`` followed by
the gallery ids; every further row is a query id followed by that query's ``n`` distances. Query
ids have to be ordered. This module writes exactly what the challenge's own baseline writes
(``write_mat_csv`` in its ``reid/utils/serialization.py``, read for reference):

* comma separated, ``\\n`` line ends, no header beyond the id row;
* ids as integers (``%i``); distances as fixed point ``%10.5f`` (width 10, 5 decimals, so a
  value is kept to within ``5e-6``; smaller means more similar);
* rows sorted by query id (ascending; the stable sort keeps a given order on equal ids);
  gallery columns in the order given (the challenge's evaluator matches them by id).

Which ids: for the test split (``reid_test``) the ids are the player ids from the file names;
for the challenge split (``reid_challenge/{query,gallery}/{index}.jpeg``) they are the file
indices (the identities are hidden). :func:`submission_ids` picks the right column of a
:class:`~cliptk.data.ReIdDataset` read by :func:`~cliptk.data.read_deepsportradar`.

Example:
    >>> import numpy as np, tempfile, os
    >>> d = np.array([[0.1, 0.9], [0.8, 0.2]])
    >>> path = os.path.join(tempfile.mkdtemp(), "challenge.csv")
    >>> _ = write_submission(path, d, [7, 3], [10, 11])
    >>> dist, q, g = read_submission(path)
    >>> q.tolist(), dist[0].tolist()     # rows sorted by query id: query 3 first
    ([3, 7], [0.8, 0.2])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._util import atomic_write
from .dataset import ReIdDataset

__all__ = ["write_submission", "read_submission", "submission_ids", "SUBMISSION_FLOAT_FORMAT"]

#: The challenge baseline's number format for distances (fixed point, 5 decimals).
SUBMISSION_FLOAT_FORMAT = "%10.5f"


def submission_ids(dataset: ReIdDataset) -> np.ndarray:
    """The ids the challenge expects for the rows of ``dataset``, as ``int64``, in row order.

    Challenge splits (``challenge_query`` / ``challenge_gallery``, pid ``-1``) use the file
    index (the ``index`` column written by :func:`~cliptk.data.read_deepsportradar`); every
    other split uses the player id.

    Raises:
        ValueError: a challenge split without an ``index`` column, or unlabelled (pid -1) rows
            outside the challenge splits (they would all get id -1).

    Example (needs the challenge data, see :func:`~cliptk.data.download_deepsportradar`):
        >>> ds = read_deepsportradar("data/deepsportradar")                # doctest: +SKIP
        >>> submission_ids(ds.subset("challenge_query"))[:3]               # doctest: +SKIP
        array([0, 1, 2])
    """
    t = dataset.table
    challenge = t["split"].str.startswith("challenge_").to_numpy()
    ids = t["pid"].to_numpy(dtype=np.int64).copy()
    if challenge.any():
        if "index" not in t.columns:
            raise ValueError(f"{dataset.name}: challenge rows have no 'index' column; read the data with "
                             "read_deepsportradar, which takes it from the file names ({index}.jpeg)")
        ids[challenge] = t.loc[challenge, "index"].to_numpy(dtype=np.int64)
    if (ids[~challenge] < 0).any():
        row = int(np.flatnonzero(ids[~challenge] < 0)[0])
        raise ValueError(f"{dataset.name}: row {row} ({t['path'].iat[row]}) has pid -1; a submission needs "
                         "player ids (test split) or file indices (challenge split)")
    return ids


def _ids(x: Any, name: str, n: int) -> np.ndarray:
    a = submission_ids(x) if isinstance(x, ReIdDataset) else np.asarray(x)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must give {n} ids (one per {'row' if name == 'query' else 'column'} of "
                         f"the distance matrix), got shape {a.shape}")
    if a.dtype.kind == "f" and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} ids must be integers (the challenge format writes them with %i), got {a.dtype}")
    return a.astype(np.int64)


def write_submission(path: str | os.PathLike, distances: Any, query: Any, gallery: Any) -> Path:
    """Write a query x gallery distance matrix as the challenge's CSV; return the path.

    Args:
        path: output file (its folder is created). Written to a temporary file, then renamed.
        distances: ``(n_query, n_gallery)`` distances (array or tensor; smaller = more similar),
            e.g. ``evaluate_reid(..., return_distances=True).distances``.
        query: ``n_query`` integer ids, or the query :class:`ReIdDataset` (see :func:`submission_ids`).
        gallery: ``n_gallery`` integer ids, or the gallery :class:`ReIdDataset`.

    Rows are written sorted by query id (stable); columns keep the given gallery order.

    Raises:
        ValueError: the matrix is not 2-D, has NaN/inf, or the id counts do not match its shape.

    Example (with the query and gallery datasets of a real run; see the module docstring for one
    that runs on plain arrays):
        >>> write_submission("runs/challenge.csv", res.distances, q_ds, g_ds)   # doctest: +SKIP
    """
    d = distances.detach().cpu().double().numpy() if isinstance(distances, torch.Tensor) else np.asarray(distances, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"distances must be 2-D (queries x gallery), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        r, c = np.argwhere(~np.isfinite(d))[0]
        raise ValueError(f"distances[{r}, {c}] is {d[r, c]}; the challenge CSV needs finite numbers "
                         "(check for NaN embeddings of unreadable images)")
    q = _ids(query, "query", d.shape[0])
    g = _ids(gallery, "gallery", d.shape[1])
    order = np.argsort(q, kind="stable")
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:  # creates the folder; no half file on error
        np.savetxt(f, np.concatenate([[0], g])[None, :], fmt="%i", delimiter=",")
        np.savetxt(f, np.column_stack([q[order], d[order]]), delimiter=",", newline="\n",
                   fmt=["%i"] + [SUBMISSION_FLOAT_FORMAT] * d.shape[1])
    return path


def read_submission(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a challenge CSV back: ``(distances (m, n) float64, query_ids (m,), gallery_ids (n,))``.

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not in the challenge layout
        (ragged rows, a first cell other than 0, non-integer ids).

    Example (a file written by :func:`write_submission`; the module docstring runs a round trip):
        >>> dist, q, g = read_submission("runs/challenge.csv")     # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_submission: {path} not found")
    try:
        table = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"read_submission: {path} is not a numeric (m+1) x (n+1) CSV: {err}") from err
    if table.shape[0] < 2 or table.shape[1] < 2 or table[0, 0] != 0 or np.isnan(table).any():
        raise ValueError(f"read_submission: {path} does not look like a challenge submission (first row "
                         "'0,<gallery ids>', then '<query id>,<distances>' rows, all the same length)")
    ids = np.concatenate([table[0, 1:], table[1:, 0]])
    if np.any(ids != np.round(ids)):
        raise ValueError(f"read_submission: {path} has non-integer ids in its first row or column")
    return table[1:, 1:], table[1:, 0].astype(np.int64), table[0, 1:].astype(np.int64)
