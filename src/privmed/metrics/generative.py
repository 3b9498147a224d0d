"""How good are synthetic images? FID and IS with a domain feature extractor, TSTR, and sample grids.

- **FID** (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017) and **IS** (Salimans et al., "Improved Techniques for Training GANs",
  NeurIPS 2016) via torchmetrics, but with a **domain feature extractor**: a privmed classifier trained on the
  real training split (:func:`train_domain_classifier`), its pooled penultimate features for FID and its
  logits for IS. No Inception weights are downloaded, so the numbers are *not* comparable with published
  Inception FID/IS; every table must say "domain features". With 2 classes IS lies in [1, 2].
- **TSTR** (train on synthetic, test on real; Esteban et al., "Real-valued (Medical) Time Series Generation
  with Recurrent Conditional GANs", 2017; Bie et al. 2023 report it as "accuracy of a classifier trained on
  the synthetic images"): :func:`tstr` trains the same small CNN on synthetic images only and tests it on the
  real test split; :func:`trtr` is the same classifier trained on the real training split, for the ratio.
- :func:`class_spread`: the per-class spread of the images across samples (a mode-collapse check).
- :func:`save_grid`: real vs synthetic images per class and per client, one PNG (phantom data in tests only:
  images made from MedMNIST files stay out of the repository).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from privmed.config import TrainConfig
from privmed.data import DatasetInfo, Split
from privmed.models import SmallCNN
from privmed.train import evaluate, make_loader, make_loss, make_optimizer, predict, set_seed, train_epoch

log = logging.getLogger(__name__)

#: The caption every FID / IS table carries.
FEATURES_NOTE = (
    "FID and IS use a domain feature extractor (a small CNN trained on the real training split), not Inception: "
    "not comparable with published Inception FID/IS"
)


class DomainFeatures(nn.Module):
    """A trained :class:`~privmed.models.SmallCNN` as torchmetrics' feature extractor.

    ``kind = "features"``: the pooled penultimate activations (FID); ``"logits"``: the class logits (IS).
    Takes uint8 images (torchmetrics' default input) and scales them to [-1, 1] as privmed's loaders do.
    """

    def __init__(self, classifier: SmallCNN, kind: str = "features") -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.kind = kind
        self.num_features = classifier.fc.in_features if kind == "features" else classifier.fc.out_features

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        if self.kind == "logits":
            return self.classifier(x)
        c = self.classifier
        return c.pool(c.features(x)).flatten(1)


def train_classifier(
    split: Split, info: DatasetInfo, *, epochs: int, seed: int = 0, batch_size: int = 64, lr: float = 0.05
) -> SmallCNN:
    """A :class:`~privmed.models.SmallCNN` trained centrally on ``split`` (plain SGD with momentum)."""
    set_seed(seed)
    model = SmallCNN(info.n_channels, info.n_labels)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, seed=seed)
    optimizer = make_optimizer(model, cfg)
    loader = make_loader(split, info, batch_size=batch_size, shuffle=True, seed=seed)
    loss_fn = make_loss(info)
    for _ in range(epochs):
        train_epoch(model, loader, optimizer, loss_fn)
    return model.eval()


def train_domain_classifier(train: Split, info: DatasetInfo, *, epochs: int = 5, seed: int = 0) -> SmallCNN:
    """The domain feature extractor's classifier: trained on the **real training split** only."""
    return train_classifier(train, info, epochs=epochs, seed=seed)


def _images(split: Split, info: DatasetInfo) -> Tensor:
    """uint8 ``(N, C, H, W)`` images of a split."""
    x = torch.from_numpy(np.ascontiguousarray(split.images))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def fid_score(classifier: SmallCNN, real: Split, fake: Split, info: DatasetInfo) -> float:
    """FID between ``real`` and ``fake`` in the domain classifier's feature space."""
    metric = FrechetInceptionDistance(feature=DomainFeatures(classifier, "features"), normalize=False)
    metric.update(_images(real, info), real=True)
    metric.update(_images(fake, info), real=False)
    return float(metric.compute())


def inception_score(classifier: SmallCNN, fake: Split, info: DatasetInfo, *, splits: int = 5) -> tuple[float, float]:
    """IS (mean, std over ``splits``) of ``fake`` with the domain classifier's logits."""
    metric = InceptionScore(feature=DomainFeatures(classifier, "logits"), normalize=False, splits=splits)
    metric.update(_images(fake, info))
    mean, std = metric.compute()
    return float(mean), float(std)


def tstr(synthetic: Split, test: Split, info: DatasetInfo, *, epochs: int = 5, seed: int = 0) -> dict[str, float]:
    """Train on synthetic, test on real: the small CNN trained on ``synthetic`` only, on the real test split."""
    model = train_classifier(synthetic, info, epochs=epochs, seed=seed)
    return evaluate(model, make_loader(test, info, batch_size=256, shuffle=False), info)


def trtr(train: Split, test: Split, info: DatasetInfo, *, epochs: int = 5, seed: int = 0) -> dict[str, float]:
    """The same classifier trained on the real training split (TSTR's reference)."""
    return tstr(train, test, info, epochs=epochs, seed=seed)


def holdout_split(split: Split, *, fraction: float, seed: int) -> tuple[Split, Split]:
    """A stratified ``(fit, holdout)`` split: ``fraction`` of every class held out for model selection."""
    rng = np.random.default_rng(seed)
    labels = split.class_labels
    held = []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        held.append(idx[: max(1, round(fraction * len(idx)))] if len(idx) > 1 else idx[:0])
    mask = np.zeros(len(split), dtype=bool)
    mask[np.concatenate(held)] = True
    return split.subset(np.flatnonzero(~mask)), split.subset(np.flatnonzero(mask))


def train_selected(
    split: Split,
    info: DatasetInfo,
    *,
    epochs: int,
    seed: int = 0,
    holdout: float = 0.1,
    batch_size: int = 64,
    augment: bool = False,
) -> tuple[SmallCNN, dict[str, float]]:
    """The small CNN trained on ``split`` for up to ``epochs`` epochs, kept at the epoch of best accuracy on a
    stratified ``holdout`` of ``split`` itself (Bie et al., TMLR 2023: model selection on held-out *training*
    images, synthetic for TSTR and real for TRTR, so the test split is never used to pick the model).
    ``augment`` trains on random flips and shifts (:func:`privmed.train.augment_batch`)."""
    fit, held = holdout_split(split, fraction=holdout, seed=seed)
    set_seed(seed)
    model = SmallCNN(info.n_channels, info.n_labels)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05, momentum=0.9, seed=seed)
    optimizer = make_optimizer(model, cfg)
    loader = make_loader(fit, info, batch_size=batch_size, shuffle=True, seed=seed)
    held_loader = make_loader(held, info, batch_size=256, shuffle=False)
    loss_fn = make_loss(info)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        train_epoch(model, loader, optimizer, loss_fn, augment=augment)
        acc = evaluate(model, held_loader, info)["accuracy"]
        if acc > best:
            best, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), {"selected_epoch": float(best_epoch), "holdout_accuracy": best}


def tstr_selected(
    train: Split,
    test: Split,
    info: DatasetInfo,
    *,
    epochs: int = 10,
    seed: int = 0,
    holdout: float = 0.1,
    augment: bool = False,
) -> dict[str, float]:
    """TSTR (or, given the real training split, TRTR) with model selection on a held-out tenth of ``train``:
    the same protocol for synthetic and real training sets, so their ratio compares like with like."""
    model, selection = train_selected(train, info, epochs=epochs, seed=seed, holdout=holdout, augment=augment)
    metrics = evaluate(model, make_loader(test, info, batch_size=256, shuffle=False), info)
    return {**metrics, **selection, "train_images": float(len(train))}


def tstr_over_seeds(
    train: Split,
    test: Split,
    info: DatasetInfo,
    *,
    epochs: int = 10,
    seeds: Sequence[int] = (0,),
    augment: bool = False,
) -> dict[str, Any]:
    """:func:`tstr_selected` once per classifier seed in ``seeds``: every metric's mean, the per-seed accuracies
    (``accuracy_per_seed``) and their sample sd (``accuracy_sd``, 0 for one seed).

    One classifier seed's TSTR or TRTR moves by several points: over five seeds TRTR on PneumoniaMNIST spread over
    0.84-0.89 on one CPU and 0.81-0.84 on another of the same kind (bench/results/hfgan_tstr.md), so a TSTR / TRTR
    ratio is read best as the ratio of means over a few seeds (Bie et al., TMLR 2023, report means over runs).
    """
    if not seeds:
        raise ValueError("tstr_over_seeds needs at least one classifier seed")
    runs = [tstr_selected(train, test, info, epochs=epochs, seed=int(s), augment=augment) for s in seeds]
    out: dict[str, Any] = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    accuracies = [r["accuracy"] for r in runs]
    out["accuracy_per_seed"] = accuracies
    out["accuracy_sd"] = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0
    out["seeds"] = [int(s) for s in seeds]
    return out


def label_agreement(classifier: SmallCNN, synthetic: Split, info: DatasetInfo) -> dict[str, float]:
    """How often a classifier trained on real images agrees with the label a conditional G was given.

    The quickest check that G uses its label: near 1 / (number of classes) when the samples of every class look
    alike, near the classifier's own test accuracy when G draws each class as the real data shows it.
    """
    logits, _ = predict(classifier, make_loader(synthetic, info, batch_size=256, shuffle=False))
    pred = logits.argmax(1).numpy()
    labels = synthetic.class_labels
    out = {"overall": float((pred == labels).mean()) if len(labels) else float("nan")}
    for k in range(info.n_labels):
        sel = labels == k
        out[f"class_{k}"] = float((pred[sel] == k).mean()) if sel.any() else float("nan")
    return out


def class_spread(split: Split, info: DatasetInfo) -> dict[str, float]:
    """Per class, the mean over pixels of the standard deviation across that class's images (images in [-1, 1]).

    A mode-collapse check that needs no feature extractor: a conditional G that draws about one image per label
    gives a spread near 0 where the real images of that class give theirs (PneumoniaMNIST: about 0.23).
    """
    labels = split.class_labels
    out = {}
    for k in range(info.n_labels):
        images = split.images[labels == k].astype(np.float64) / 127.5
        out[f"class_{k}"] = float(images.std(axis=0).mean()) if len(images) > 1 else float("nan")
    return out


def _tile(images: np.ndarray) -> np.ndarray:
    """``(n, H, W[, 3])`` uint8 -> one row ``(H, n*W[, 3])`` with a 1-pixel gap."""
    if len(images) == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    pad = [(0, 0), (0, 0), (0, 1)] + ([(0, 0)] if images.ndim == 4 else [])
    return np.concatenate(list(np.pad(images, pad)), axis=1)


def save_grid(path: str | Path, rows: Mapping[str, np.ndarray], *, per_row: int = 8) -> Path:
    """One PNG: a row of ``per_row`` images for every named row (e.g. "real class 0", "client 3 class 0").

    Rows are stacked in order; the names are written to ``<path>.txt`` beside the image (no fonts needed).
    """
    tiles = [_tile(images[:per_row]) for images in rows.values()]
    width = max(t.shape[1] for t in tiles)
    padded = [np.pad(t, [(0, 1), (0, width - t.shape[1])] + [(0, 0)] * (t.ndim - 2)) for t in tiles]
    grid = np.concatenate(padded, axis=0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    out.with_suffix(".txt").write_text("rows, top to bottom:\n" + "\n".join(rows) + "\n")
    return out


def class_rows(split: Split, prefix: str, classes: Sequence[int]) -> dict[str, np.ndarray]:
    """Grid rows of ``split``'s images, one per class."""
    labels = split.class_labels
    return {f"{prefix} class {k}": split.images[labels == k] for k in classes}
