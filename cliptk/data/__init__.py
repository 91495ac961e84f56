"""Re-identification data: the dataset type, readers for the usual layouts, the real data's
download and the challenge's submission file.

The modules, from the bottom up (each imports only those above it in this list):

* :mod:`~cliptk.data.images` — :func:`load_image` (any image file to 8-bit RGB, optionally decoded
  at a reduced size) and :class:`ImageLoadError`;
* :mod:`~cliptk.data.dataset` — :class:`ReIdDataset` (a table of images with ``path, pid, camid,
  split, caption`` and free metadata; :meth:`~ReIdDataset.holdout` for query/gallery splits),
  :func:`stable_pid` (identity names to pids) and :func:`camids_for_evaluation` (the camera rule);
* :mod:`~cliptk.data.readers` — :func:`read_folder`, :func:`read_csv`, :func:`read_deepsportradar`,
  :func:`read_market1501` and :func:`read_dataset`, which guesses the layout;
* :mod:`~cliptk.data.download` — :func:`download_deepsportradar`, the checked, atomic download of
  the DeepSportRadar challenge archive (and :func:`download_main`, the ``data download`` command);
* :mod:`~cliptk.data.submission` — :func:`write_submission` / :func:`read_submission`, the
  challenge's distance-matrix CSV, and :func:`submission_ids`.

The synthetic players (:mod:`cliptk.synthetic`) sit above this package: they write files in the
DeepSportRadar layout that :func:`read_deepsportradar` reads.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> path = write_submission(Path(tempfile.mkdtemp()) / "sub.csv", np.eye(2), [5, 4], [4, 5])
    >>> read_submission(path)[1].tolist()
    [4, 5]
"""
from .images import ImageLoadError, image_suffixes, load_image
from .dataset import (REQUIRED_COLUMNS, UNKNOWN_CAMERA, ReIdDataset, camids_for_evaluation, concat,
                      stable_pid)
from .readers import (IMAGE_SUFFIXES, SPLIT_FOLDERS, read_csv, read_dataset, read_deepsportradar, read_folder,
                      read_market1501)
from .download import (DEEPSPORTRADAR_MD5, DEEPSPORTRADAR_URL, DOWNLOADERS, DownloadError,
                       download_deepsportradar, download_main)
from .submission import SUBMISSION_FLOAT_FORMAT, read_submission, submission_ids, write_submission

__all__ = [
    # images
    "ImageLoadError", "load_image", "image_suffixes",
    # dataset
    "ReIdDataset", "concat", "stable_pid", "camids_for_evaluation", "REQUIRED_COLUMNS", "UNKNOWN_CAMERA",
    # readers
    "read_folder", "read_csv", "read_deepsportradar", "read_market1501", "read_dataset", "IMAGE_SUFFIXES",
    "SPLIT_FOLDERS",
    # download
    "download_deepsportradar", "download_main", "DownloadError", "DOWNLOADERS", "DEEPSPORTRADAR_URL",
    "DEEPSPORTRADAR_MD5",
    # submission
    "write_submission", "read_submission", "submission_ids", "SUBMISSION_FLOAT_FORMAT",
]
