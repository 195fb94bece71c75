#!/usr/bin/env python
"""Inference-time levers on RE-Matching's zero-shot splits for one checkpoint: label-text forms, direction-aware
scoring, label centring, hubness correction (CSLS), WiSE-FT label encoders and a transductive calibration, each
scored with the protocol's macro F1 beside the protocol's own scoring, and an oracle reference (label vectors built
from the labelled test sentences).

    python benchmarks/zeroshot_levers.py --model_name_or_path outputs/sacon-minilm               # the ori splits
    python benchmarks/zeroshot_levers.py --model_name_or_path CKPT --splits 'zeroshot/fewrel_rel2id_*_4?.json' \\
        --output_json levers.json
    python benchmarks/zeroshot_levers.py --combine seed40.json seed41.json --output_json seeded.json  # one table

Every sentence is encoded once (and once more with head and tail exchanged); every lever is a different label text
or a different score over the same vectors, so the table compares levers on identical sentences. The `protocol` row
is exactly `examples/evaluate_zeroshot.py`'s scoring (the nearest "name [SEP] description" by cosine). Tune levers
on the `ori` splits (FewRel's validation relations) only; the seeded splits are for reporting. The checkpoint's
recorded pre-training relations are checked against every split's test relations first, as the evaluator does.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.harness`
import benchmarks.harness  # noqa: E402,F401  (the development data directory, unless SACON_DATA_DIR is set)
from modeling_sacon.data import load_fewrel_json, load_label_table, resolve_data_path
from modeling_sacon.fewshot.evaluation import SaconEncoder, encode_length_sorted
from modeling_sacon.fewshot.zeroshot_protocol import (
    ZeroShotSplit, check_strictness, find_split_files, gather_test_sentences, load_pretraining_relations, load_zeroshot_split,
    macro_prf,
)
from modeling_sacon.training.interpolation import interpolate_label_encoder, load_reference_weights, recorded_label_backbone
from modeling_sacon.utils.loading import load_sacon_model

from benchmarks.harness.zeroshot import LABEL_FILE, SENTENCE_FILES as FEWREL_FILES  # noqa: E402  (the block's test data)

DEFAULT_SPLITS = "zeroshot/fewrel_rel2id_*_ori.json"
# the centred levers' reference: the embedded corpus, restricted to the checkpoint's recorded pre-training relations
REFERENCE_SENTENCES = ("pretrain_v2/sentences.json", "pretrain_v2/longtail.json")
REFERENCE_LABELS = ("fewrel/pid2name.json", "pretrain_v2/labels.json")

# label-text forms: (name, description) -> what the label tower reads
LABEL_FORMS: dict[str, Callable[[str, str], str | tuple[str, str]]] = {
    "name [SEP] description": lambda name, description: (name, description),  # the protocol's (pre-training's form)
    "name only": lambda name, description: name,
    "description only": lambda name, description: description or name,
    "name: description": lambda name, description: f"{name}: {description}",
}
ENSEMBLE = ("name [SEP] description", "name: description", "description only")  # the forms that keep the description
SWAP_WEIGHTS = (0.5, 1.0)  # direction-aware penalty weights
HUBNESS_NEIGHBOURS = 20  # corpus sentences in a label's hubness (CSLS's k)
HUBNESS_WEIGHTS = (0.5, 1.0)
ORACLE = "oracle: mean test sentence per relation (labelled test data, not the protocol)"


def interpolation_lever(weight: float) -> str:
    return f"label encoder interpolated with its backbone, weight {weight:g} (WiSE-FT)"


@torch.no_grad()
def interpolated_label_vectors(encoder: SaconEncoder, reference: Mapping[str, torch.Tensor], weights: Sequence[float],
                               labels: Sequence[tuple[str, str]]) -> dict[float, torch.Tensor]:
    """{weight: normalised label vectors} with the label encoder at each of `weights` between `reference` (its
    backbone) and the checkpoint, as `--label_encoder_interpolation` / examples/interpolate_label_encoder.py make it;
    each on a copy of the model, so the checkpoint's own rows stay as they are."""
    out = {}
    for weight in weights:
        model = copy.deepcopy(encoder.model)
        interpolate_label_encoder(model, reference, weight)
        out[weight] = F.normalize(SaconEncoder(model, encoder.processor).encode_labels(labels), dim=-1)
    return out


def direction_aware(scores: torch.Tensor, swapped: torch.Tensor, weight: float) -> torch.Tensor:
    """Penalise a label that matches the sentence read backwards (head and tail exchanged) better than as written:
    such a label describes the inverse direction (a `child` sentence read backwards is a `mother` one)."""
    return scores - weight * (swapped - scores).clamp(min=0)


def transductive(scores: torch.Tensor) -> torch.Tensor:
    """Subtract each label's mean score over the split's test sentences: uses the test set as a whole, which the
    protocol does not allow (shown as a diagnostic of label bias, not as a result)."""
    return scores - scores.mean(dim=0, keepdim=True)


def oracle_prototypes(sentences: torch.Tensor, gold: Sequence[int], m: int) -> torch.Tensor:
    """Each relation's normalised mean test-sentence vector as its label vector, built from the labelled test sentences
    (so not the protocol): where these sentence vectors put each relation. Label vectors there score this row's F1
    (nearest centroid, a reference rather than a strict bound); far below it, the label tower is what falls short."""
    index = torch.as_tensor(list(gold))
    sums = torch.zeros(m, sentences.shape[-1], dtype=sentences.dtype).index_add_(0, index, sentences)
    return F.normalize(sums, dim=-1)


def hubness(labels: torch.Tensor, corpus_sentences: torch.Tensor, k: int = HUBNESS_NEIGHBOURS) -> torch.Tensor:
    """[m] each label's mean cosine to its `k` nearest pre-training sentences (CSLS's local density, Conneau et al.
    2018): a label close to many sentences of *other* relations is a hub that takes sentences it does not describe.
    Measured on the corpus (the checkpoint's own relations), never on the test split."""
    return (labels @ corpus_sentences.T).topk(min(k, corpus_sentences.shape[0]), dim=-1).values.mean(-1)


def hubness_corrected(scores: torch.Tensor, labels: torch.Tensor, corpus_sentences: torch.Tensor,
                      weight: float) -> torch.Tensor:
    """[n, m] `scores` less `weight` times each label's hubness (a sentence's own density is the same for every label,
    so CSLS's other term leaves the argmax unchanged)."""
    return scores - weight * hubness(labels, corpus_sentences)


def hubness_lever(weight: float, interpolation: float | None = None) -> str:
    labels = "labels" if interpolation is None else f"WiSE-FT {interpolation:g} labels"
    return f"hubness-corrected {labels} (CSLS on corpus sentences, k={HUBNESS_NEIGHBOURS}, weight {weight:g})"


def centred(vectors: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """L2-normalised `vectors` less a reference `mean`: removes the direction every vector of a tower shares, which
    makes generic labels nearest to many sentences (hubs). The means come from the pre-training corpus (the
    checkpoint's own relations), never from the test split, so this stays inside the protocol."""
    return F.normalize(vectors - mean, dim=-1)


def lever_scores(
    sentences: torch.Tensor, swapped: torch.Tensor, labels: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor] | None = None, gold: Sequence[int] | None = None,
    interpolated: Mapping[float, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every lever's [n, m] scores from L2-normalised sentence, swapped-sentence and (per label form) label vectors;
    `reference`: the mean normalised "sentence" and "label" vectors of the pre-training corpus, for the centred levers,
    and its normalised sentence vectors ("sentences"), for the hubness-corrected ones; `interpolated`: {weight: label
    vectors} of label encoders interpolated with their backbone; `gold` (each sentence's relation index): adds the
    oracle reference row."""
    protocol = sentences @ labels["name [SEP] description"].T
    out = {"protocol: name [SEP] description": protocol}
    out.update({f"label text: {form}": sentences @ vectors.T for form, vectors in labels.items()
                if form != "name [SEP] description"})
    ensemble = F.normalize(sum(labels[form] for form in ENSEMBLE), dim=-1)  # prompt ensembling, as CLIP's
    out["label text: mean of " + " / ".join(ENSEMBLE)] = sentences @ ensemble.T
    backwards = swapped @ labels["name [SEP] description"].T
    out.update({f"direction-aware, weight {w:g}": direction_aware(protocol, backwards, w) for w in SWAP_WEIGHTS})
    if reference is not None:
        label_vectors = centred(labels["name [SEP] description"], reference["label"])
        out["centred labels (corpus label mean)"] = sentences @ label_vectors.T
        out["centred labels and sentences (corpus means)"] = centred(sentences, reference["sentence"]) @ label_vectors.T
    out.update({interpolation_lever(weight): sentences @ vectors.T for weight, vectors in (interpolated or {}).items()})
    if reference is not None:
        bases = {None: labels["name [SEP] description"], **(interpolated or {})}
        out.update({hubness_lever(w, interpolation):
                    hubness_corrected(sentences @ vectors.T, vectors, reference["sentences"], w)
                    for interpolation, vectors in bases.items() for w in HUBNESS_WEIGHTS})
    out["transductive calibration (not the protocol)"] = transductive(protocol)
    if gold is not None:
        out[ORACLE] = sentences @ oracle_prototypes(sentences, gold, protocol.shape[1]).T
    return out


def corpus_reference(encoder, relations: Sequence[str], sentence_files: Sequence[str], label_files: Sequence[str],
                 per_relation: int, batch_size: int, data_dir: str | None = None) -> dict | None:
    """Mean normalised sentence vector (the first `per_relation` sentences of each of `relations` in `sentence_files`),
    those vectors themselves ("sentences"), and the mean normalised label vector ("name [SEP] description" of every one
    of `relations` in `label_files`); None when the files hold no sentence or no label of `relations` (then there are
    no centred or hubness levers)."""
    from modeling_sacon.data import first_per_relation

    table = load_label_table([resolve_data_path(f, data_dir) for f in label_files])
    known = [r for r in relations if r in table]
    rows = load_fewrel_json([resolve_data_path(f, data_dir) for f in sentence_files])
    wanted = set(relations)
    rows = first_per_relation(rows.filter(lambda row: row["relation"] in wanted), per_relation)
    if not known or not len(rows):
        return None
    sentences = F.normalize(encode_length_sorted(encoder, list(rows), batch_size), dim=-1)
    labels = F.normalize(encoder.encode_labels([table[r] for r in known]), dim=-1)
    return {"sentence": sentences.mean(0), "label": labels.mean(0), "sentences": sentences, "labels": len(known)}


@torch.no_grad()
def measure(encoder, splits: Sequence[ZeroShotSplit], sources, label_table, batch_size: int = 128,
            reference: Mapping[str, torch.Tensor] | None = None, backbone: Mapping[str, torch.Tensor] | None = None,
            interpolation_weights: Sequence[float] = ()) -> dict:
    """{lever: {split key: F1 %}} and each lever's mean F1 per m (keyed "5", "10", ...: as in the JSON)."""
    relations = list(dict.fromkeys(r for split in splits for r in split.test))
    rows = gather_test_sentences(sources, relations, source="the test sentences")
    backwards = rows.map(lambda row: {"head": row["tail"], "tail": row["head"]})
    sentences = F.normalize(encode_length_sorted(encoder, list(rows), batch_size), dim=-1)
    swapped = F.normalize(encode_length_sorted(encoder, list(backwards), batch_size), dim=-1)
    labels = {form: F.normalize(encoder.encode_labels([make(*label_table[r]) for r in relations]), dim=-1)
              for form, make in LABEL_FORMS.items()}
    interpolated = (interpolated_label_vectors(encoder, backbone, interpolation_weights, [label_table[r] for r in relations])
                    if interpolation_weights else {})
    index = {r: i for i, r in enumerate(relations)}
    rows_of: dict[str, list[int]] = {r: [] for r in relations}
    for i, relation in enumerate(rows["relation"][:]):
        rows_of[relation].append(i)
    per_split: dict[str, dict[str, float]] = {}
    for split in splits:
        selected = [i for r in split.test for i in rows_of[r]]
        columns = [index[r] for r in split.test]
        gold = [k for k, r in enumerate(split.test) for _ in rows_of[r]]
        scores = lever_scores(sentences[selected], swapped[selected], {f: v[columns] for f, v in labels.items()},
                              reference, gold, {w: v[columns] for w, v in interpolated.items()})
        for lever, values in scores.items():
            per_split.setdefault(lever, {})[split.key] = round(100 * macro_prf(gold, values.argmax(-1).tolist()).f1, 2)
    return {"per_split": per_split, "mean_f1": mean_f1(per_split)}


def markdown(result: dict) -> str:
    ms = list(next(iter(result["mean_f1"].values())))
    base = result["mean_f1"]["protocol: name [SEP] description"]
    lines = ["| lever | " + " | ".join(f"m={m} F1 (%)" for m in ms) + " |", "|---|" + "---:|" * len(ms)]
    for lever, means in result["mean_f1"].items():
        cells = [f"{means[m]:.2f}" + ("" if lever.startswith("protocol") else f" ({means[m] - base[m]:+.2f})") for m in ms]
        lines.append(f"| {lever} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_f1(per_split: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Each lever's mean F1 over the splits of each m (split keys "m<m>/<name>"), keyed "5", "10", ..."""
    keys = next(iter(per_split.values()))
    ms = sorted({int(key.split("/")[0][1:]) for key in keys})
    keys_of_m = {m: [key for key in keys if key.split("/")[0] == f"m{m}"] for m in ms}
    return {lever: {str(m): round(sum(values[k] for k in group) / len(group), 2) for m, group in keys_of_m.items()}
            for lever, values in per_split.items()}


def combine(results: Sequence[Mapping]) -> dict:
    """One table from the outputs of several checkpoints scored on disjoint splits (the zero-shot block trains one per
    seed, each scored on its seed's splits): per-split F1 merged, means recomputed over every split."""
    per_split: dict[str, dict[str, float]] = {}
    for result in results:
        for lever, values in result["per_split"].items():
            clash = set(values) & set(per_split.get(lever, {}))
            if clash:
                raise ValueError(f"--combine: split(s) {sorted(clash)} scored by more than one checkpoint")
            per_split.setdefault(lever, {}).update(values)
    if any(set(values) != set(per_split[next(iter(per_split))]) for values in per_split.values()):
        raise ValueError("--combine: the results do not score the same levers (made by different versions?)")
    return {"model": [result["model"] for result in results],
            "splits": [key for result in results for key in result["splits"]],
            "per_split": per_split, "mean_f1": mean_f1(per_split)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="instead of scoring: one table from these outputs (checkpoints scored on disjoint splits)")
    parser.add_argument("--splits", nargs="+", default=[DEFAULT_SPLITS], help="split files or globs (in --data_dir)")
    parser.add_argument("--data_dir", default=None, help="default: SACON_DATA_DIR (the data beside the checkout)")
    parser.add_argument("--fewrel_files", nargs="+", default=list(FEWREL_FILES),
                        help="FewRel JSON files of the test sentences (in --data_dir unless found as given)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--reference_files", nargs="+", default=list(REFERENCE_SENTENCES),
                        help="FewRel-format pre-training sentences for the centred levers' sentence mean")
    parser.add_argument("--reference_label_files", nargs="+", default=list(REFERENCE_LABELS),
                        help="label tables for the centred levers' label mean")
    parser.add_argument("--reference_per_relation", type=int, default=20,
                        help="sentences per pre-training relation in the sentence mean (0: no centred levers)")
    parser.add_argument("--label_interpolation", nargs="*", type=float, default=[], metavar="W",
                        help="rows with the label encoder interpolated with its backbone at these weights (WiSE-FT)")
    parser.add_argument("--backbone", default=None,
                        help="the label encoder's backbone for --label_interpolation (default: as its config records)")
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.combine:
        return _report(combine([_load_output(path) for path in args.combine]), args.output_json)
    if args.model_name_or_path is None:
        raise SystemExit("zeroshot_levers.py: give --model_name_or_path (or --combine)")
    datasets.disable_progress_bars()
    splits = sorted((load_zeroshot_split(f) for f in find_split_files(args.splits, args.data_dir)), key=lambda s: (s.m, s.name))
    label_table = load_label_table([resolve_data_path(LABEL_FILE, args.data_dir)])
    pretraining_relations = load_pretraining_relations(args.model_name_or_path)
    check_strictness(splits, pretraining_relations, label_table, checkpoint=args.model_name_or_path)
    model, processor = load_sacon_model(args.model_name_or_path)
    encoder = SaconEncoder(model.eval(), processor)
    sources = [load_fewrel_json([resolve_data_path(f, args.data_dir) for f in args.fewrel_files])]
    reference = None
    if args.reference_per_relation and pretraining_relations:
        with torch.no_grad():
            reference = corpus_reference(encoder, pretraining_relations, args.reference_files, args.reference_label_files,
                                     args.reference_per_relation, args.batch_size, args.data_dir)
    backbone = None
    if args.label_interpolation:
        path = args.backbone or recorded_label_backbone(model)
        if path is None:
            raise SystemExit("zeroshot_levers.py: --label_interpolation needs the label encoder's backbone: give --backbone")
        backbone = load_reference_weights(path)
    result = {"model": args.model_name_or_path, "splits": [s.key for s in splits],
              **measure(encoder, splits, sources, label_table, args.batch_size, reference, backbone,
                        args.label_interpolation)}
    if reference is not None:
        result["reference"] = {"sentences": len(reference["sentences"]), "labels": reference["labels"],
                               "files": [*args.reference_files, *args.reference_label_files]}
    return _report(result, args.output_json)


def _load_output(path: str) -> dict:
    """An earlier `--output_json` of this script, for `--combine`."""
    result = json.loads(Path(path).read_text())
    for key in ("model", "splits", "per_split"):
        if key not in result:
            raise ValueError(f"{path}: field {key!r} missing: not an --output_json of benchmarks/zeroshot_levers.py")
    return result


def _report(result: dict, output_json: str | None) -> dict:
    print(markdown(result))
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
