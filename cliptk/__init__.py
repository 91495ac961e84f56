"""cliptk: contrastive fine-tuning of CLIP-style models, embedding-space exploration and Score-CAM
explanations of image-to-image similarity (player re-identification, CLIP-ReIdent).

    import cliptk as ct
    model = ct.load_model()                      # the bundled tiny CLIP, offline
"""
from .data import (ReIdDataset, ImageLoadError, load_image, read_folder, read_csv, read_deepsportradar,
                   read_market1501, read_dataset)
from .models import (ClipModel, load_model, save_model, freeze, list_models, WeightsNotAvailableError,
                     DEFAULT_MODEL, DEFAULT_PRETRAINED)

__version__ = "0.1.0"
