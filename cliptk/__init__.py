"""cliptk: contrastive fine-tuning of CLIP-style models, embedding-space exploration and Score-CAM
explanations of image-to-image similarity (player re-identification, after CLIP-ReIdent).

    import cliptk as ct
    ds = ct.read_deepsportradar(ct.generate_players("data/generated/players"))
    model = ct.load_model()                       # the bundled tiny CLIP, offline
    print(ct.evaluate(model, ds))                 # zero-shot re-id mAP / CMC

Everything a notebook needs is re-exported here; modules hold one concept each.
"""
from . import smoke
from .data import (ImageLoadError, ReIdDataset, load_image, read_csv, read_dataset, read_deepsportradar, read_folder,
                   read_market1501)
from .embed import embed, embed_texts
from .evaluate import evaluate, zero_shot_probe
from .losses import (DecoupledSoftmax, GISTFilter, GuidedInfoNCE, InfoNCE, LogitScale, SoftTargetInfoNCE, SupCon,
                     gather_with_grad, make_loss)
from .metrics import (ProbeResult, ReIdResult, alignment, classify_zero_shot, evaluate_reid, knn_accuracy,
                      modality_gap, neighbourhood_overlap, rerank_k_reciprocal, trustworthiness, uniformity)
from .models import (DEFAULT_MODEL, DEFAULT_PRETRAINED, ClipModel, WeightsNotAvailableError, calibrate_batchnorm,
                     freeze, list_models, load_model, reinit_top_blocks, save_model)
from .samplers import GroupedPairSampler, PKSampler, UniqueIdPairSampler
from . import lab
from .lab import LabData, LabHead, LabMethod, gist_mask_sweep, plot_lab, run_lab, train_head
from .explain import (CamConfig, Faithfulness, SimilarityCam, explain_topk, faithfulness, plot_cam_grid, plot_cam_pair,
                      plot_faithfulness, select_pairs, similarity_cam, similarity_cams)
from .viz import (aligned_projection, embedding_report, export_html, html_fragment, plot_before_after, plot_embeddings,
                  project, warm_up)
from .widgets import Explorer
from .widgets_cam import CamPairPicker
from .train import History, NonFiniteLossError, TrainConfig, fit, live_plot, run_from_config
from .synthetic import generate_players, make_players, render_player, samples_grid
from .default import finetuned, players, players_root
from .debug import (RankBrowser, Ranking, ap_breakdown, confused_pairs, find_leaks, label_noise_suspects, plot_ranked,
                    plot_similarity_hist, pos_neg_similarities, rank_gallery, similarity_threshold, worst_queries_html)
from .download import download_deepsportradar
from .report import Report
from .submission import read_submission, write_submission

__version__ = "0.1.0"

__all__ = [
    # data
    "ReIdDataset", "ImageLoadError", "load_image", "read_folder", "read_csv", "read_deepsportradar",
    "read_market1501", "read_dataset", "generate_players", "make_players", "render_player", "samples_grid",
    # models and embeddings
    "ClipModel", "load_model", "save_model", "freeze", "calibrate_batchnorm", "reinit_top_blocks", "list_models", "WeightsNotAvailableError",
    "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "embed", "embed_texts",
    # evaluation
    "evaluate", "zero_shot_probe", "evaluate_reid", "rerank_k_reciprocal", "classify_zero_shot", "ReIdResult",
    "ProbeResult", "knn_accuracy", "neighbourhood_overlap", "trustworthiness", "alignment", "uniformity",
    "modality_gap",
    # training pieces
    "InfoNCE", "SupCon", "DecoupledSoftmax", "SoftTargetInfoNCE", "GuidedInfoNCE", "GISTFilter", "LogitScale",
    "gather_with_grad", "make_loss", "UniqueIdPairSampler", "GroupedPairSampler", "PKSampler",
    # debugging, real data, reports
    "rank_gallery", "Ranking", "plot_ranked", "worst_queries_html", "RankBrowser", "ap_breakdown", "confused_pairs",
    "pos_neg_similarities", "similarity_threshold", "plot_similarity_hist", "find_leaks", "label_noise_suspects",
    "download_deepsportradar", "write_submission", "read_submission", "Report",
    # fine-tuning
    "TrainConfig", "fit", "History", "NonFiniteLossError", "live_plot", "run_from_config",
    # explanations
    "similarity_cam", "similarity_cams", "explain_topk", "faithfulness", "select_pairs", "plot_cam_pair",
    "plot_cam_grid", "plot_faithfulness", "CamConfig", "SimilarityCam", "Faithfulness", "CamPairPicker",
    # embedding space
    "project", "warm_up", "aligned_projection", "plot_embeddings", "plot_before_after", "export_html",
    "html_fragment", "embedding_report", "Explorer",
    # losses lab
    "lab", "LabMethod", "LabData", "LabHead", "train_head", "run_lab", "plot_lab", "gist_mask_sweep",
    "players", "players_root", "finetuned", "smoke",
]
