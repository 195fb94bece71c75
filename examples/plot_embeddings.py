"""Plot SaCon sentence and relation-label embeddings in 2-D (a run's training curves: plot_training_curves.py).

    python examples/plot_embeddings.py                                        # untrained MiniLM composition
    python examples/plot_embeddings.py --model_name_or_path outputs/sacon-minilm --output sacon.png

`--per_relation` sentences of every relation of `--data_file` (a seeded selection) are encoded as the evaluator does
([h ; t] at the entity-start markers) and the relation texts of `--label_file` with the label tower ([CLS ; mean]);
both are L2-normalised and projected *jointly* to 2-D (PCA), so the plot shows whether sentences cluster by relation
and whether each relation's label (a star) lies in its cluster: what SaCon's anchored contrastive loss trains for.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling_sacon import SaconDualEncoderModel, SaconProcessor  # noqa: E402
from modeling_sacon.data import development_data_dir, label_texts, load_fewrel_json, load_label_table, resolve_data_path  # noqa: E402
from modeling_sacon.utils.loading import load_sacon_model  # noqa: E402
from modeling_sacon.fewshot.evaluation import SaconEncoder, encode_length_sorted  # noqa: E402

logger = logging.getLogger("plot_embeddings")
DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise

PROJECTIONS = ("pca",)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


# --------------------------------------------------------------------------- projection


def project_2d(x: torch.Tensor | np.ndarray, projection: str = "pca") -> torch.Tensor:
    """[n, D] -> [n, 2] float32: the scores on the first two principal axes (PCA of the centred rows, float64).

    `torch.pca_lowrank` (randomised subspace iteration: fast where a full SVD of a [n, D] matrix is slow on a busy
    CPU) run under a fixed seed, so the result is deterministic and the global RNG untouched; each axis' sign is
    fixed so that the point with the largest absolute score on it is positive. Missing axes (n < 3 or D < 2) are 0.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection={projection!r} is unknown; choose one of {PROJECTIONS}")
    x = torch.as_tensor(x if isinstance(x, torch.Tensor) else np.asarray(x)).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"project_2d expects [n, D] embeddings, got shape {tuple(x.shape)}")
    n, d = x.shape
    out = torch.zeros(n, 2, dtype=torch.float64)
    if n < 2 or d == 0:
        return out.float()
    centred = x - x.mean(dim=0, keepdim=True)
    q = min(n, d, 10)  # oversampled: the top two axes come out accurate after a few iterations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(centred, q=q, center=False, niter=8)
    k = min(2, q)
    coords = centred @ v[:, :k]
    coords[:, s[:k] <= s[0] * 1e-12] = 0.0  # a direction with no variance (e.g. all rows equal) is no axis
    for j in range(k):
        pivot = coords[:, j].abs().argmax()
        if coords[pivot, j] < 0:
            coords[:, j] = -coords[:, j]
    out[:, :k] = coords
    return out.float()


# --------------------------------------------------------------------------- model and data


def load_model(model_name_or_path: str | None) -> tuple[SaconDualEncoderModel, SaconProcessor, str]:
    """A SaCon checkpoint, or (default) SaCon composed untrained from the packaged MiniLM; also a display name."""
    model, processor = load_sacon_model(model_name_or_path)
    name = (Path(model_name_or_path).name or str(model_name_or_path)) if model_name_or_path else (
        "all-MiniLM-L6-v2, untrained SaCon composition"
    )
    return model, processor, name


def select_instances(dataset, per_relation: int, seed: int = 0) -> list[dict]:
    """`per_relation` rows of each relation (all when it has fewer), drawn without replacement with a seeded rng.

    Relations keep their order of first appearance; rows within a relation keep file order.
    """
    if per_relation < 1:
        raise ValueError(f"per_relation must be >= 1, got {per_relation}")
    groups: dict[str, list[int]] = {}
    for row, relation in enumerate(dataset["relation"]):
        groups.setdefault(relation, []).append(row)
    rng = np.random.default_rng(seed)
    picked = []
    for rows in groups.values():
        take = rng.choice(len(rows), size=min(per_relation, len(rows)), replace=False)
        picked.extend(rows[i] for i in sorted(take))
    return [dict(r) for r in dataset.select(picked)]


@torch.no_grad()
def encode_for_plot(
    model: SaconDualEncoderModel,
    processor: SaconProcessor,
    instances: Sequence[Mapping],
    labels: Sequence[tuple[str, str]] | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalised sentence embeddings [n, D] (length-sorted batches) and label embeddings [U, D] (or None)."""
    encoder = SaconEncoder(model, processor)
    sentences = torch.empty(0)
    if instances:
        sentences = F.normalize(encode_length_sorted(encoder, instances, batch_size), dim=-1)
    label_embeds = None
    if labels:
        if not encoder.has_labels:
            raise ValueError("this model has no label encoder; pass --no_labels")
        label_embeds = F.normalize(
            torch.cat([encoder.encode_labels(list(labels[s : s + batch_size])) for s in range(0, len(labels), batch_size)]),
            dim=-1,
        )
    return sentences, label_embeds


# --------------------------------------------------------------------------- plotting


def relation_colors(n: int) -> list:
    """One colour per relation: tab20 (in an order that puts dark and light shades apart), then hsv beyond 20."""
    if n <= 20:
        cmap = plt.get_cmap("tab20")
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the 10 saturated shades first
        return [cmap(order[i]) for i in range(n)]
    cmap = plt.get_cmap("hsv")
    return [cmap(i / n) for i in range(n)]


def plot_embeddings(
    sentence_embeddings: torch.Tensor,
    sentence_relations: Sequence[str],
    path: str | Path,
    label_embeddings: torch.Tensor | None = None,
    label_relations: Sequence[str] | None = None,
    relation_names: Mapping[str, str] | None = None,
    title: str = "SaCon embeddings",
    projection: str = "pca",
) -> torch.Tensor:
    """Project sentences (and labels) jointly to 2-D and save a scatter plot to `path`; returns the [n (+U), 2] points.

    One colour per relation; labels are large stars annotated with the relation name. `relation_names` maps a
    relation id to a display name (default: the id).
    """
    relation_names = dict(relation_names or {})
    sentence_relations = list(sentence_relations)
    if len(sentence_relations) != len(sentence_embeddings):
        raise ValueError(f"{len(sentence_embeddings)} sentence embeddings but {len(sentence_relations)} relations")
    label_relations = list(label_relations or [])
    if label_embeddings is not None and len(label_relations) != len(label_embeddings):
        raise ValueError(f"{len(label_embeddings)} label embeddings but {len(label_relations)} label relations")
    parts = [torch.as_tensor(sentence_embeddings).float()]
    if label_embeddings is not None and len(label_embeddings):
        parts.append(torch.as_tensor(label_embeddings).float())
    points = project_2d(torch.cat(parts), projection)
    sentence_xy, label_xy = points[: len(sentence_relations)].numpy(), points[len(sentence_relations) :].numpy()

    relations = list(dict.fromkeys(sentence_relations + label_relations))
    colors = dict(zip(relations, relation_colors(len(relations))))
    markers = {r: MARKERS[(i // 20) % len(MARKERS)] for i, r in enumerate(relations)}

    def display(relation: str) -> str:
        name = relation_names.get(relation)
        return f"{relation}: {name}" if name else str(relation)

    fig, ax = plt.subplots(figsize=(15, 10), dpi=110)
    rel_array = np.asarray(sentence_relations, dtype=object)
    for relation in relations:
        mask = rel_array == relation
        if mask.any():
            ax.scatter(
                sentence_xy[mask, 0], sentence_xy[mask, 1], s=14, alpha=0.6, color=colors[relation],
                marker=markers[relation], linewidths=0, label=textwrap.shorten(display(relation), 48, placeholder="…"),
            )
    annotations = []
    for (x, y), relation in zip(label_xy, label_relations):
        ax.scatter([x], [y], s=420, marker="*", color=colors[relation], edgecolors="black", linewidths=1.2, zorder=5)
        text = textwrap.fill(relation_names.get(relation) or str(relation), 22)
        annotations.append(ax.annotate(
            text, (x, y), xytext=(8, 8), textcoords="offset points", fontsize=8.5, fontweight="bold", zorder=6,
            color="black", annotation_clip=False,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": colors[relation], "alpha": 0.55, "linewidth": 0},
            arrowprops={"arrowstyle": "-", "color": "0.3", "linewidth": 0.7, "shrinkA": 0, "shrinkB": 6},
        ))
    if label_relations:  # one legend entry explaining the stars
        ax.scatter([], [], s=160, marker="*", color="white", edgecolors="black", label="relation label (name [SEP] description)")
    ax.margins(0.06)  # room for the label names near the edges
    ax.set_title(title, fontsize=13)
    ax.set_xlabel(f"{projection.upper()} 1")
    ax.set_ylabel(f"{projection.upper()} 2")
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, markerscale=1.5,
              title=f"{len(relations)} relations", title_fontsize=9)
    fig.tight_layout()
    _spread_annotations(fig, ax, annotations)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return points


def _spread_annotations(fig, ax, annotations: list, iterations: int = 2000, margin: float = 6.0) -> None:
    """Move overlapping annotation boxes apart (a tiny adjustText), so the names of nearby stars stay readable.

    Works in display pixels on the drawn figure: texts repel each other and are pushed off every star (the anchors),
    and stay inside the axes; each keeps a leader line to its star. Deterministic.
    """
    if not annotations:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_points = 72.0 / fig.dpi
    offsets = np.array([a.xyann for a in annotations], dtype=float) / to_points  # in pixels
    boxes = np.array([list(Text.get_window_extent(a, renderer).extents) for a in annotations])  # text only, no line
    boxes += [-margin, -margin, margin, margin]
    base = boxes - np.tile(offsets, 2)  # box relative to its offset: fixed while only the offsets move
    star = 16.0 / to_points / 2  # half the star's size in pixels
    anchors = ax.transData.transform(np.array([a.xy for a in annotations], dtype=float))
    stars = np.concatenate([anchors - star, anchors + star], axis=1)
    frame = ax.get_window_extent(renderer).extents

    order = np.arange(len(annotations))
    tie = np.where(order[:, None] < order[None, :], -1.0, 1.0)  # equal centres: the lower index goes left/down

    def pushes(a: np.ndarray, b: np.ndarray, tie_sign: np.ndarray) -> np.ndarray:
        """[n, m, 2]: the smallest move of each box of a off each box of b (zero where they do not overlap)."""
        dx = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
        dy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
        overlap = (dx > 0) & (dy > 0)
        centre = (a[:, None, :2] + a[:, None, 2:]) / 2 - (b[None, :, :2] + b[None, :, 2:]) / 2
        sign = np.where(centre == 0, tie_sign[..., None], np.sign(centre))
        along_x = dx < dy  # mainly along the axis needing the smaller move, a little along the other (so a pair
        # that a wall of the axes blocks on one axis slides apart along the other)
        move = np.stack([np.where(along_x, dx, 0.15 * dx), np.where(along_x, 0.15 * dy, dy)], axis=-1) * sign
        return np.where(overlap[..., None], move, 0.0)

    eye = np.eye(len(annotations), dtype=bool)[..., None]
    star_tie = np.ones((len(annotations), len(stars)))
    for _ in range(iterations):
        current = base + np.tile(offsets, 2)
        step = np.where(eye, 0.0, pushes(current, current, tie)).sum(1) / 2 + pushes(current, stars, star_tie).sum(1)
        box = current + np.tile(step, 2)  # then back inside the axes
        step += np.maximum(frame[:2] - box[:, :2], 0) - np.maximum(box[:, 2:] - frame[2:], 0)
        if np.abs(step).max() < 0.5:
            break
        offsets += step * 0.5
    for annotation, offset in zip(annotations, offsets):
        annotation.xyann = tuple(offset * to_points)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None,
                        help="a SaCon checkpoint directory (default: compose SaCon untrained from the packaged MiniLM)")
    parser.add_argument("--data_dir", default=DATA_DIR, help="directory of the relative files")
    parser.add_argument("--data_file", default="fewrel/val_wiki.json", help="FewRel JSON, relative to --data_dir")
    parser.add_argument("--label_file", default="fewrel/pid2name.json", help="relation -> [name, description]")
    parser.add_argument("--no_labels", action="store_true", help="plot sentences only (no label stars)")
    parser.add_argument("--label_fallback", action="store_true",
                        help="relations missing from --label_file get their id as name (FewRel 2.0 PubMed)")
    parser.add_argument("--per_relation", type=int, default=50, help="sentences per relation (seeded selection)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projection", default="pca", choices=PROJECTIONS)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", default="embeddings.png", help="embedding plot (PNG)")
    parser.add_argument("--title", default=None, help="plot title (default: names the model and data)")
    return parser


@torch.no_grad()  # inference only; a decorator, not a global switch, so callers keep autograd
def main(argv: Sequence[str] | None = None) -> str:
    """Returns the path of the PNG written."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    data_path = resolve_data_path(args.data_file, args.data_dir)
    instances = select_instances(load_fewrel_json(data_path), args.per_relation, args.seed)
    relations = [row["relation"] for row in instances]
    distinct = list(dict.fromkeys(relations))
    names: dict[str, str] = {}
    label_list = None
    if not args.no_labels or args.label_file:
        try:
            table = load_label_table(resolve_data_path(args.label_file, args.data_dir))
            texts = label_texts(distinct, table, fallback=args.label_fallback, source=str(data_path))
            names = {r: name for r, (name, _) in texts.items()}
            label_list = None if args.no_labels else [texts[r] for r in distinct]
        except (FileNotFoundError, KeyError) as err:
            if not args.no_labels:
                raise
            logger.warning("relation names unavailable (%s); the legend shows relation ids", err)

    model, processor, model_name = load_model(args.model_name_or_path)
    logger.info("encoding %d sentences of %d relations with %s", len(instances), len(distinct), model_name)
    sentences, labels = encode_for_plot(model, processor, instances, label_list, args.batch_size)
    title = args.title or (
        f"{model_name}: {len(instances)} {data_path.name} sentences ({args.per_relation}/relation)"
        f"{' + relation labels (stars)' if labels is not None else ''}, joint {args.projection.upper()}"
    )
    plot_embeddings(sentences, relations, args.output, labels, distinct if labels is not None else None, names, title,
                    args.projection)
    logger.info("wrote %s", args.output)
    return str(args.output)


if __name__ == "__main__":
    main(sys.argv[1:])
