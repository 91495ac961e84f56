"""The embedded default: the synthetic players dataset at the sizes every notebook and the demo use.

One place decides the sizes (full vs ``CLIPTK_SMOKE=1``) and the folder, so notebooks, the demo and
the benchmarks share one generated copy instead of each making its own.
"""
from __future__ import annotations

import os
from pathlib import Path

from .data import ReIdDataset, read_deepsportradar
from .smoke import is_smoke, pick
from .synthetic import generate_players

__all__ = ["players", "players_root", "finetuned", "config_path", "PLAYERS_SIZES"]

#: (n_train_ids, n_test_ids, images_per_id) for the full and the smoke world
PLAYERS_SIZES = {"full": (400, 100, 10), "smoke": (60, 30, 6)}


def players_root() -> Path:
    """Where the embedded dataset lives: ``$CLIPTK_DATA/generated/players[-smoke]`` (``data/`` by default)."""
    from .models import data_dir

    return Path(data_dir()) / "generated" / pick("players", "players-smoke")


def players(root: str | os.PathLike | None = None, seed: int = 0) -> ReIdDataset:
    """Generate (once; cached on disk) and read the synthetic players dataset.

    Example:
        >>> ds = players()          # doctest: +SKIP
        >>> ds.subset("query")      # doctest: +SKIP
    """
    n_train, n_test, per_id = PLAYERS_SIZES["smoke" if is_smoke() else "full"]
    root = generate_players(root or players_root(), n_train_ids=n_train, n_test_ids=n_test, images_per_id=per_id,
                            seed=seed)
    return read_deepsportradar(root)


def smoke_config(cfg):
    """A training config shrunk for ``CLIPTK_SMOKE=1``: a few steps, one epoch, a batch the small
    smoke world can fill (it has 60 training identities). Unchanged outside smoke mode."""
    if not is_smoke():
        return cfg
    return cfg.replace(max_steps=min(cfg.max_steps or 6, 6), epochs=1, eval_every=1,
                       batch_size=min(cfg.batch_size, 16))


def config_path(name: str = "cpu_tiny") -> Path:
    """A config shipped in the repository's ``configs/`` folder."""
    return Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"


def finetuned(config: str | os.PathLike | None = None, *, progress: bool = True, callbacks=()):
    """The bundled tiny CLIP fine-tuned on the embedded default (``configs/cpu_tiny.yaml``).

    Trained on the first call (a few minutes on a CPU; a few steps under ``CLIPTK_SMOKE=1``) and
    cached in ``data/generated/finetuned-<hash of the config>/``, so notebooks 00, 03 and 04 and
    the demo share one fine-tuned model instead of each training their own.

    Returns:
        ``(model, history)``; ``history`` is the :class:`cliptk.train.History` of the run that made
        the weights (read back from the cache when it exists).
    """
    import hashlib
    import json

    from .models import data_dir, load_model
    from .train import History, TrainConfig, fit

    cfg = TrainConfig.from_yaml(config or config_path())
    cfg = smoke_config(cfg)
    from .models import BUNDLED

    source = cfg.pretrained
    if (cfg.model, str(cfg.pretrained)) in BUNDLED:  # the bundled file may be re-made: key on its bytes' identity
        st = (Path(data_dir()) / BUNDLED[(cfg.model, str(cfg.pretrained))]).stat()
        source = f"{source}:{st.st_size}:{st.st_mtime_ns}"
    key = hashlib.blake2b(f"{cfg.to_yaml()}|{source}".encode(), digest_size=6).hexdigest()
    out = Path(data_dir()) / "generated" / f"finetuned-{key}{'-smoke' if is_smoke() else ''}"
    weights, rows = out / "model.safetensors", out / "history.json"
    if weights.is_file() and rows.is_file():
        model = load_model(cfg.model, weights, image_only=cfg.image_only, projection=cfg.projection)
        return model, History(rows=json.loads(rows.read_text()))
    data = players()
    model = load_model(cfg.model, cfg.pretrained, image_only=cfg.image_only, projection=cfg.projection)
    history = fit(model, data, cfg.replace(output_dir=str(out), progress=progress), eval_data=data,
                  callbacks=callbacks)
    from .models import save_model

    save_model(model, weights)
    tmp = rows.with_name(rows.name + ".tmp")
    tmp.write_text(json.dumps(history.rows, default=float))
    os.replace(tmp, rows)
    return model, history
