"""Load CLIP-style models on top of open_clip's factory, with the CLIP-ReIdent options.

``load_model(name, pretrained)`` returns a :class:`ClipModel`: an ``nn.Module`` holding the open_clip
model (or only its image tower), its inference preprocessing (letterbox resize by default, as
CLIP-ReIdent does for tall player crops) and its tokenizer. Names are open_clip's own
(``"ViT-L-14"``, ``"RN50"``, ...) plus cliptk's tiny configs registered through open_clip's config
mechanism (``cliptk/model_configs/*.json``):

* ``cliptk-tiny``   — ViT, 96×48 px, patch 8, width 128, 4 layers, 2-layer text tower; bundled
  weights pre-trained on synthetic-player captions (tag ``"synthetic-players"``);
* ``cliptk-tiny-rn`` — a tiny ModifiedResNet tower (128 px), for ResNet code paths;
* ``cliptk-micro``  — the smallest thing that runs, for tests.

``pretrained`` is ``None`` (random init), an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``,
...), cliptk's bundled tag, or a local file of any layout an open_clip user has (the hub's
``.safetensors`` / ``.bin``, a training ``.pt`` with ``state_dict`` and DDP prefixes, an
image-only state dict, or a cliptk ``.safetensors`` whose metadata names its model; see
:func:`read_checkpoint`). cliptk builds each architecture without weights and loads the file
itself, so open_clip's "initialized randomly" notice appears only for a real random init (once per
model name). Weights that are not available offline raise :class:`WeightsNotAvailableError`, which
says how to supply a local file in Python and on the command line.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ._util import atomic_path
from .weights import has_text_tower, load_state, read_checkpoint
from .settings import data_dir

__all__ = [
    "ClipModel",
    "load_model",
    "save_model",
    "read_checkpoint",
    "load_state",
    "remove_projection",
    "WeightsNotAvailableError",
    "freeze",
    "calibrate_batchnorm",
    "reinit_top_blocks",
    "list_models",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "BUNDLED",
]

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

DEFAULT_MODEL = "cliptk-tiny"
DEFAULT_PRETRAINED = "synthetic-players"


#: cliptk's own pretrained tags: (model name, tag) -> file under ``data/``.
BUNDLED: dict[tuple[str, str], str] = {
    ("cliptk-tiny", "synthetic-players"): "models/cliptk-tiny-synthetic-players.safetensors",
}


class WeightsNotAvailableError(FileNotFoundError):
    """Pretrained weights cannot be found offline; the message says how to provide them."""


class _ImageOnly(nn.Module):
    """The image tower and logit scale of a CLIP model, with CLIP's ``encode_image`` interface.

    Kept as a module with the same attribute names as open_clip's ``CLIP`` so that state-dict keys
    (``clip.visual.*``, ``clip.logit_scale``) match between image-only and full models."""

    def __init__(self, visual: nn.Module, logit_scale: nn.Parameter):
        super().__init__()
        self.visual = visual
        self.logit_scale = logit_scale

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)


class ClipModel(nn.Module):
    """A CLIP model (or its image tower) with its preprocessing and tokenizer.

    Attributes:
        clip: the open_clip model (``CLIP``/``CustomTextCLIP``) or an image-only wrapper.
        preprocess: PIL image -> normalised ``[3, H, W]`` tensor (inference; letterbox by default).
        tokenizer: ``list[str] -> LongTensor[N, context_length]`` (None for image-only models).
        name, pretrained: what was loaded, for reprs, caches and checkpoints.
        image_size: ``(H, W)`` the tower expects.
        mean, std: normalisation constants of ``preprocess``.

    ``model(images)`` is ``encode_image(images)``: L2-normalised ``[B, D]`` embeddings.
    """

    def __init__(self, clip: nn.Module, preprocess, tokenizer, *, name: str, pretrained: str | None,
                 image_only: bool, projection: bool, resize: str):
        super().__init__()
        self.clip = clip
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.image_only = image_only
        self.projection = projection
        self.resize = resize
        size = self.visual.image_size
        self.image_size: tuple[int, int] = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
        self.mean, self.std = tuple(norm.mean), tuple(norm.std)

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def embed_dim(self) -> int:
        with torch.no_grad():
            x = torch.zeros(1, 3, *self.image_size, device=self.device, dtype=self.dtype)
            return int(self.encode_image(x).shape[-1])

    @property
    def tower_type(self) -> str:
        """``"vit"`` or ``"resnet"`` (other towers: the class name, lower-cased)."""
        cls = type(self.visual).__name__
        return {"VisionTransformer": "vit", "ModifiedResNet": "resnet"}.get(cls, cls.lower())

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, 3, H, W]`` preprocessed images -> ``[B, D]`` embeddings (L2-normalised by default)."""
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Strings (tokenised here) or token ids -> ``[N, D]`` text embeddings.

        Raises:
            RuntimeError: the model was loaded with ``image_only=True``.
        """
        if self.image_only:
            raise RuntimeError(f"{self.name} was loaded image-only (image_only=True, or from a checkpoint that holds "
                               f"only an image tower, as `cliptk train` writes: {self.pretrained}): it has no text "
                               "tower; for text probes load a model with one (e.g. the zero-shot weights)")
        if not isinstance(texts, torch.Tensor):
            texts = self.tokenizer(list(texts))
        return self.clip.encode_text(texts.to(self.device), normalize=normalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the towers (open_clip's gradient checkpointing)."""
        self.clip.set_grad_checkpointing(enable)

    def fingerprint(self) -> str:
        """A short hash of the weights and preprocessing (used by the embedding cache)."""
        import hashlib

        h = hashlib.blake2b(digest_size=12)
        h.update(repr((self.name, self.image_size, self.mean, self.std, self.resize)).encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, pretrained={self.pretrained!r}, image_size={self.image_size}, "
                f"image_only={self.image_only}, projection={self.projection}, resize={self.resize!r}")


def list_models() -> list[str]:
    """All architecture names open_clip knows, cliptk's tiny ones included."""
    return open_clip.list_models()


_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_RANDOM_INIT_SAID: set[str] = set()   # names whose random init was announced in this process


_HOW_TO_PASS = ("pass the file's path: in Python load_model('{name}', '{path}'), on the command line "
                "--model {name} --pretrained {path} (eval, demo) or --set model={name} pretrained={path} (train)")


def _missing_weights(name: str, tag: str, err: Exception | None) -> WeightsNotAvailableError:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    where = cfg.get("hf_hub") or cfg.get("url") or "(see open_clip.list_pretrained())"
    why = f" ({type(err).__name__}: {str(err).splitlines()[0][:200]})" if err else ""
    how = _HOW_TO_PASS.format(name=name, path="/path/to/open_clip_pytorch_model.bin")
    return WeightsNotAvailableError(
        f"weights for model {name!r} with pretrained tag {tag!r} are not available on this machine{why}. "
        f"Either (1) on a machine with internet run\n"
        f"    python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"\n"
        f"and copy its cache (~/.cache/huggingface/hub, or the folder set by HF_HOME) to this machine; or "
        f"(2) download the checkpoint from {where} and {how}. "
        f"Offline, cliptk's bundled model works out of the box: load_model('{DEFAULT_MODEL}', '{DEFAULT_PRETRAINED}') "
        f"(the command line's default).")


def _weights_reachable(name: str, tag: str, cache_dir: str | None, timeout: float = 3.0) -> bool:
    """True when the weights are in the local hub cache or the hub answers within ``timeout`` s.

    Without this check an offline machine spends about a minute in huggingface_hub's retries
    before failing; with it the user gets the how-to-fix message at once."""
    import socket
    from urllib.parse import urlparse

    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo = hub.rstrip("/")
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, fname, cache_dir=cache_dir), str):
                return True
        if constants.HF_HUB_OFFLINE:
            return False
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    else:
        url = cfg.get("url", "")
        cached = Path(cache_dir or Path.home() / ".cache" / "clip") / Path(urlparse(url).path).name
        if url and cached.is_file():
            return True
        host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class _NoRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" record: cliptk builds
    every architecture without weights and loads checkpoints itself, so the notice would be false."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    root, notice = logging.getLogger(), _NoRandomInitNotice()   # open_clip logs it on the root logger
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _say_random_init(name: str) -> None:
    """The one notice of a real random init (``pretrained=None``): once per model name and process."""
    if name in _RANDOM_INIT_SAID:
        return
    _RANDOM_INIT_SAID.add(name)
    warnings.warn(f"No pretrained weights loaded for {name!r} (pretrained=None): the model is randomly "
                  f"initialised. For trained weights pass an open_clip tag "
                  f"(open_clip.list_pretrained_tags_by_model({name!r})) or a checkpoint file.", UserWarning,
                  stacklevel=3)


def _create(name: str, pretrained: str | None, resize: str, device, precision: str, cache_dir):
    """open_clip model + eval transform: the bare architecture for ``pretrained=None`` (cliptk loads
    checkpoint files itself), or open_clip's own download/cache for a tag, with offline-friendly errors."""
    kwargs = dict(image_resize_mode=resize, device=device, precision=precision, cache_dir=cache_dir)
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"unknown model {name!r}; choose one of cliptk.list_models() "
                         f"(e.g. {DEFAULT_MODEL!r}, 'ViT-B-16', 'ViT-L-14')")
    if pretrained is None:
        with _quiet_random_init():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, **kwargs)
        return model, preprocess
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        bundled = [t for (n, t) in BUNDLED if n == name]
        raise ValueError(f"model {name!r} has no pretrained tag {pretrained!r}; known tags: {tags + bundled or 'none'}"
                         "; or pass a local checkpoint path, or None for random init")
    if not _weights_reachable(name, pretrained, cache_dir):
        raise _missing_weights(name, pretrained, None)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # hub/HTTP/offline errors come in many types; all mean "not here"
        raise _missing_weights(name, pretrained, err) from err
    return model, preprocess


def _checkpoint_path(name: str, pretrained: str | os.PathLike | None) -> Path | None:
    """The file ``pretrained`` names (cliptk's bundled tag or a path), or ``None`` (a tag / random init)."""
    if pretrained is None:
        return None
    if (name, str(pretrained)) in BUNDLED:
        path = data_dir() / BUNDLED[(name, str(pretrained))]
        if not path.is_file():
            raise WeightsNotAvailableError(f"weights for {name!r} / {pretrained!r} not found at {path}: it is made "
                                           "by `python scripts/pretrain_tiny_clip.py`")
        return path
    text = str(pretrained)
    looks_like_path = isinstance(pretrained, os.PathLike) or "/" in text or os.sep in text \
        or Path(text).suffix in _CHECKPOINT_SUFFIXES
    if not looks_like_path and (name.startswith(("hf-hub:", "local-dir:"))
                                or text in open_clip.list_pretrained_tags_by_model(name) or not Path(text).is_file()):
        return None   # a tag (checked by _create)
    path = Path(pretrained).expanduser()
    if path.is_dir():   # a training run's folder: its final weights
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        raise WeightsNotAvailableError(f"{path} is a folder without model.safetensors (model {name!r}): pass a weights "
                                       "file; a training run that stopped early has its checkpoints in "
                                       f"{path / 'checkpoints'} (resume it with `cliptk train --resume {path}`)")
    if not path.is_file():
        raise WeightsNotAvailableError(f"checkpoint file not found: {pretrained} (model {name!r}); check the path, "
                                       "or pass an open_clip tag (open_clip.list_pretrained_tags_by_model"
                                       f"({name!r})) or None for random init")
    return path


def _model_from_metadata(name: str, meta: dict[str, str], path: Path) -> str:
    """The model a cliptk file was written for (its metadata); warns when it overrides ``name``."""
    saved = meta.get("name")
    if not saved or saved == name:
        return name
    if saved not in open_clip.list_models() and not saved.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"{path} was written for model {saved!r} (its metadata), which this installation does "
                         f"not know (cliptk.list_models()); it cannot be loaded as {name!r}")
    warnings.warn(f"{path.name} was written for model {saved!r} (its metadata): loading {saved!r}, not the "
                  f"given {name!r}", UserWarning, stacklevel=3)
    return saved


def load_model(name: str = DEFAULT_MODEL, pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED, *,
               device: str | torch.device = "cpu", image_only: bool | None = None, projection: bool = True,
               resize: str = "letterbox", precision: str = "fp32", cache_dir: str | None = None) -> ClipModel:
    """Load a CLIP model with its preprocessing and tokenizer.

    Args:
        name: an open_clip architecture (``"ViT-L-14"``) or a cliptk tiny config (``"cliptk-tiny"``).
            A cliptk checkpoint names its model in its metadata: that name wins (with a warning
            when it differs from ``name``), so a file loads whatever ``name`` says.
        pretrained: ``None`` (random init, said once per model name in a warning), an open_clip tag
            (``"openai"``), cliptk's bundled tag (``"synthetic-players"`` for ``cliptk-tiny``), or a
            local checkpoint file of any open_clip or cliptk layout (:func:`read_checkpoint`). The
            default loads the bundled tiny model; for other names pass a tag or ``None`` explicitly.
        device: where to put the model.
        image_only: drop the text tower (CLIP-ReIdent fine-tunes the image tower only). ``None``
            (default): image-only exactly when the checkpoint holds only an image tower (what
            ``cliptk train`` writes), else both towers. ``False`` with such a file warns that the
            text tower is randomly initialised.
        projection: keep the image tower's output projection; ``False`` removes it (CLIP-ReIdent),
            so embeddings are the tower's width (ViT towers only). A checkpoint written without it
            loads without it.
        resize: ``"letterbox"`` (keep aspect ratio, pad; CLIP-ReIdent), ``"squash"`` or ``"crop"``.
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (inference; training uses AMP instead).

    Returns:
        :class:`ClipModel` in eval mode.

    Raises:
        ValueError: unknown name or tag. WeightsNotAvailableError: weights not found offline (the
        message says how to pass a local file, in Python and on the command line). RuntimeError:
        a checkpoint that does not fit the architecture (names the file and what to do).

    Example:
        >>> m = load_model("cliptk-micro", None)
        >>> m.encode_image(torch.randn(2, 3, *m.image_size)).shape
        torch.Size([2, 32])
    """
    modes = {"letterbox": "longest", "squash": "squash", "crop": "shortest"}
    if resize not in modes:
        raise ValueError(f"resize must be one of {list(modes)}, got {resize!r}")
    if (name, DEFAULT_PRETRAINED) not in BUNDLED and pretrained == DEFAULT_PRETRAINED:
        raise ValueError(f"{name!r} has no bundled {DEFAULT_PRETRAINED!r} weights: pass an open_clip tag "
                         f"(one of {open_clip.list_pretrained_tags_by_model(name)}), a checkpoint path, or None")
    path = _checkpoint_path(name, pretrained)
    state, meta = (None, {}) if path is None else read_checkpoint(path)
    if path is not None:
        name = _model_from_metadata(name, meta, path)
        file_image_only = not has_text_tower(state)
        if image_only is None:
            image_only = file_image_only
        elif not image_only and file_image_only:
            warnings.warn(f"{path.name} holds only an image tower (as `cliptk train` writes): the text tower of "
                          f"this {name!r} is randomly initialised. Load it with image_only=None or True for "
                          "image embeddings; for text probes use the zero-shot model's text tower", UserWarning,
                          stacklevel=2)
    image_only = bool(image_only)
    model, preprocess = _create(name, None if path is not None else pretrained, modes[resize], device, precision,
                                cache_dir)
    if pretrained is None:
        _say_random_init(name)
    tokenizer = open_clip.get_tokenizer(name) if not image_only else None
    if image_only:
        model = _ImageOnly(model.visual, model.logit_scale)
    wrapped = ClipModel(model, preprocess, tokenizer, name=name, pretrained=None if pretrained is None else str(pretrained),
                        image_only=image_only, projection=True, resize=resize)
    if state is not None:
        no_proj = meta.get("projection") == "False" or (
            wrapped.tower_type == "vit" and getattr(wrapped.visual, "proj", None) is not None
            and not any(k in state for k in ("visual.proj", "proj")))
        if no_proj:
            remove_projection(wrapped)
        load_state(wrapped, state, source=str(path))
    if not projection and wrapped.projection:
        remove_projection(wrapped)
    return wrapped.to(device).eval()


def remove_projection(model: ClipModel) -> ClipModel:
    """Remove the image tower's output projection (CLIP-ReIdent uses the ViT's pooled width).

    Raises:
        NotImplementedError: the tower is not a ViT (a ResNet's attention pool has no separable projection).
    """
    if getattr(model.visual, "proj", None) is None and model.tower_type != "vit":
        raise NotImplementedError(f"projection=False needs a ViT tower; {model.name} has {type(model.visual).__name__}")
    model.visual.proj = None
    model.projection = False
    return model


def _umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_model(model: ClipModel, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write the weights as safetensors atomically (temporary file + rename), with the model name
    and options in the file's metadata so :func:`load_model` (``pretrained=path``) reads it back.

    The file gets the permissions of any new file (``0o666`` less the umask), not the private
    ``0o600`` that safetensors gives its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": model.name, "image_only": str(model.image_only), "projection": str(model.projection),
            "resize": model.resize, **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
        os.chmod(tmp, 0o666 & ~_umask())
    return path


def freeze(model: ClipModel, text: bool = True, image: bool = False, unlocked_image_groups: int = 0,
           logit_scale: bool = False) -> ClipModel:
    """Freeze parts of a model (requires_grad=False) and return it.

    Args:
        text: freeze the text tower (LiT-style image fine-tuning).
        image: freeze the image tower except its last ``unlocked_image_groups`` groups
            (open_clip's ``lock``: groups are the ViT's blocks or the ResNet's stages).
        logit_scale: freeze the learnable temperature.
    """
    if image:
        model.visual.lock(unlocked_groups=unlocked_image_groups)
    if text and not model.image_only:
        for n, p in model.clip.named_parameters():
            if not n.startswith("visual.") and n != "logit_scale":
                p.requires_grad_(False)
    model.logit_scale.requires_grad_(not logit_scale)
    return model


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor | None = None, *, seed: int = 0) -> nn.Module:
    """Give a randomly initialised ResNet tower informative embeddings: unit weights for BatchNorm
    layers whose weight is all zero, and running statistics estimated on ``images``.

    Why: a random-init open_clip ``ModifiedResNet`` embeds every image almost the same. open_clip
    zero-initialises the last BatchNorm of each bottleneck (``bn3``), so every block starts as an
    identity, and in eval mode BatchNorm uses its initial running statistics (mean 0, variance 1), so
    it does not normalise and the activations drift into a degenerate range. Tests, benchmarks and
    demos that explain or embed with a random ResNet call this first; a trained model does not
    need it (its statistics are real).

    Args:
        model: a :class:`ClipModel` (or any module whose ``forward`` takes ``[N, 3, H, W]`` images).
        images: preprocessed ``[N, 3, H, W]`` images (N >= 2); ``None``: 16 standard-normal noise
            images of ``model.image_size`` drawn with ``seed``.

    Returns:
        ``model``, in eval mode (each BatchNorm's ``momentum`` is restored).

    Raises:
        ValueError: the model has no BatchNorm layer (nothing to calibrate), or ``images=None`` for a
            model without ``image_size``.

    Example:
        >>> model = calibrate_batchnorm(load_model("cliptk-tiny-rn", None, image_only=True))   # doctest: +SKIP
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"calibrate_batchnorm: {type(model).__name__} has no BatchNorm layer to calibrate")
    if images is None:
        size = getattr(model, "image_size", None)
        if size is None:
            raise ValueError("calibrate_batchnorm: pass images= (the model has no image_size to draw noise of)")
        images = torch.randn(16, 3, *size, generator=torch.Generator().manual_seed(seed))
    param = next(model.parameters())
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            m.momentum = None   # a cumulative average: the statistics of exactly these images
            m.reset_running_stats()
            if m.weight is not None and not m.weight.any():
                m.weight.fill_(1.0)
        model.train()
        try:
            model(images.to(param.device, param.dtype))
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            model.eval()
    return model


def reinit_top_blocks(model: ClipModel, n: int) -> ClipModel:
    """Re-initialise the image tower's last ``n`` blocks and its output head; keep the rest.

    A fine-tuning option ("re-initialise the top layers", Zhang et al., "Revisiting Few-sample BERT
    Fine-tuning", ICLR 2021): the top layers of a pre-trained tower are the most specific to its
    pre-training objective; when that objective discarded the cues re-id needs (a CLIP trained on
    captions that name only kit colour and number), keeping the lower blocks and re-learning the top
    ones can fine-tune faster than keeping all of them. The paper's recipe re-initialises nothing, and
    on the bundled tiny CLIP (pre-trained on varied alt-text-like captions) neither does
    ``configs/clip_reident_tiny.yaml``; ``configs/cpu_tiny.yaml`` keeps the option for the ablation.

    What is re-initialised, the way open_clip initialises a fresh tower (PyTorch's module defaults):
    ViT: the last ``n`` residual blocks, ``ln_post`` and the projection (if kept; ``width**-0.5``
    normal, as open_clip). ResNet: the last ``n`` of ``layer1..layer4`` (each bottleneck's ``bn3``
    zeroed, as open_clip does) and the attention pool. Uses the global torch RNG (seed it first).

    Raises:
        ValueError: ``n`` is not in ``1 .. number of blocks``.
        NotImplementedError: the tower is neither an open_clip ViT nor a ModifiedResNet.
    """
    v = model.visual

    def reset(module: nn.Module) -> None:
        for sub in module.modules():
            fn = getattr(sub, "reset_parameters", None) or getattr(sub, "_reset_parameters", None)
            if fn is not None:
                fn()

    if hasattr(v, "transformer"):
        blocks = list(v.transformer.resblocks)
        heads = [v.ln_post]
    elif all(hasattr(v, f"layer{i}") for i in range(1, 5)):
        blocks = [v.layer1, v.layer2, v.layer3, v.layer4]
        heads = [v.attnpool]
    else:
        raise NotImplementedError(f"reinit_top_blocks: unknown image tower {type(v).__name__}")
    if not 1 <= n <= len(blocks):
        raise ValueError(f"reinit_top_blocks: n={n} must be in 1..{len(blocks)} (blocks of {model.name}'s tower)")
    with torch.no_grad():
        for module in [*blocks[-n:], *heads]:
            reset(module)
            for sub in module.modules():
                if hasattr(sub, "bn3"):
                    nn.init.zeros_(sub.bn3.weight)
        if isinstance(getattr(v, "proj", None), nn.Parameter):
            v.proj.normal_(0.0, v.proj.shape[0] ** -0.5)
    return model
