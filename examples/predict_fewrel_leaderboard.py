"""Predict a FewRel leaderboard submission with a SaCon checkpoint: one `pred-N-K.json` per test file.

    python examples/predict_fewrel_leaderboard.py --model_name_or_path outputs/sacon-minilm \
        --test_file test_wiki_input-5-1.json test_wiki_input-5-5.json test_wiki_input-10-1.json \
        test_wiki_input-10-5.json --output_dir submission/
    # SimpleFSRE-style prototypes (support mean + relation description) need the relation texts:
    python examples/predict_fewrel_leaderboard.py --model_name_or_path outputs/sacon-minilm \
        --method label_augmented --label_file fewrel/pid2name.json --test_file test_wiki_input-5-1.json

A test file is a JSON list of episodes `{"meta_train": [[instance] * K] * N, "meta_test": instance, "relation":
[N relation ids]}`; the answer of an episode is the index of the query's relation in `meta_train`. Every distinct
sentence of all the files (same tokens and entity spans) is encoded once, in length-sorted batches; the episodes are
then scored on the cached embeddings with `modeling_sacon.scoring.prototype_logits` (cosine to the class prototypes).
`--nota_logit T` adds a none-of-the-above answer N for queries whose best scaled cosine is below T (NOTA files).
The predictions are written with `modeling_sacon.data.episodes.write_predictions` as `<output_dir>/pred-N-K.json`; zip
the folder's files for the CodaLab submission.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from modeling_sacon import SaconDualEncoderModel, SaconProcessor
from modeling_sacon.data import development_data_dir, label_texts, load_label_table, resolve_data_path
from modeling_sacon.utils.loading import load_sacon_model
from modeling_sacon.data.episodes import load_test_episodes, prediction_filename, write_predictions
from modeling_sacon.fewshot.evaluation import SaconEncoder, encode_length_sorted, sentence_key
from modeling_sacon.scoring import FEWSHOT_METHODS, SIMILARITIES, prototype_logits

DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise

logger = logging.getLogger("predict_fewrel_leaderboard")


def episode_instances(episode: Mapping) -> list[Mapping]:
    """Support instances (relation-major) then the query."""
    return [instance for shots in episode["meta_train"] for instance in shots] + [episode["meta_test"]]


class SentenceCache:
    """Distinct sentences -> rows of one embedding matrix, each sentence encoded exactly once."""

    def __init__(self):
        self.index: dict[tuple, int] = {}
        self.instances: list[Mapping] = []
        self.embeddings: torch.Tensor | None = None

    def add(self, instance: Mapping) -> int:
        key = sentence_key(instance)
        row = self.index.get(key)
        if row is None:
            row = self.index[key] = len(self.instances)
            self.instances.append(instance)
        return row

    def encode(self, encoder, batch_size: int = 64, progress: bool = False):
        """Encode the sentences added since the last call with `encoder` (a `SaconEncoder`), shortest first."""
        done = 0 if self.embeddings is None else len(self.embeddings)
        if done == len(self.instances):
            return self.embeddings
        new = encode_length_sorted(encoder, self.instances[done:], batch_size, show_progress=progress)
        self.embeddings = new if self.embeddings is None else torch.cat([self.embeddings, new])
        return self.embeddings


def episode_rows(episodes: Sequence[Mapping], cache: SentenceCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache rows of the support [E, N, K] and of the query [E] of each episode (adding the sentences to `cache`)."""
    support = [[[cache.add(instance) for instance in shots] for shots in episode["meta_train"]] for episode in episodes]
    query = [cache.add(episode["meta_test"]) for episode in episodes]
    return torch.tensor(support, dtype=torch.long), torch.tensor(query, dtype=torch.long)


def predict_episodes(
    sentence_embeddings: torch.Tensor,
    support_rows: torch.Tensor,
    query_rows: torch.Tensor,
    label_embeddings: torch.Tensor | None = None,
    method: str = "prototype",
    similarity: str = "cosine",
    scale: float = 1.0,
    nota_logit: float | None = None,
    chunk_size: int = 1024,
) -> list[int]:
    """Answer index of every episode: argmax over `prototype_logits` (N meaning NOTA when `nota_logit` is set).

    `label_embeddings` is [E, N, D] (the relation texts of each episode) for the label methods.
    """
    predictions: list[int] = []
    for start in range(0, len(query_rows), chunk_size):
        stop = start + chunk_size
        support = sentence_embeddings[support_rows[start:stop]]  # [e, N, K, D]
        query = sentence_embeddings[query_rows[start:stop]].unsqueeze(1)  # [e, 1, D]
        labels = None if label_embeddings is None else label_embeddings[start:stop]
        logits = prototype_logits(
            query, None if method == "zero_shot" else support, labels, method, similarity, scale, nota_logit
        )  # [e, 1, N(+1)]
        predictions.extend(logits[:, 0].argmax(-1).tolist())
    return predictions


def load_model(model_name_or_path: str | None) -> tuple[SaconDualEncoderModel, SaconProcessor]:
    if not model_name_or_path:
        logger.warning("no --model_name_or_path: composing an UNTRAINED SaCon from the packaged MiniLM (a smoke test, "
                       "not a submission)")
    return load_sacon_model(model_name_or_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None,
                        help="a SaCon checkpoint (default: untrained composition of the packaged MiniLM, for testing)")
    parser.add_argument("--test_file", nargs="+", required=True,
                        help="leaderboard input file(s), e.g. test_wiki_input-5-1.json; each gives pred-N-K.json")
    parser.add_argument("--output_dir", default=".", help="where the pred-N-K.json files are written")
    parser.add_argument("--method", default="prototype", choices=FEWSHOT_METHODS,
                        help="prototype: support mean; label_augmented: support mean + relation text (needs "
                             "--label_file); zero_shot: relation text only")
    parser.add_argument("--data_dir", default=DATA_DIR, help="directory of the relative files")
    parser.add_argument("--label_file", default="fewrel/pid2name.json",
                        help="relation id -> [name, description], for the label methods")
    parser.add_argument("--label_fallback", action="store_true",
                        help="relation ids missing from --label_file get their id as name (FewRel 2.0 PubMed)")
    parser.add_argument("--similarity", default="cosine", choices=SIMILARITIES)
    parser.add_argument("--nota_logit", type=float, default=None,
                        help="none-of-the-above threshold in scaled-cosine logits (answer N below it); default: off")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    return parser


@torch.no_grad()  # inference only; a decorator, not a global switch, so callers keep autograd
def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Returns {test file: predictions file written}."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)

    # 1. Read and validate every test file first: a bad file or a name clash fails before the model loads.
    files = {}
    outputs: dict[str, Path] = {}
    for test_file in args.test_file:
        path = resolve_data_path(test_file, args.data_dir)
        episodes = load_test_episodes(path)
        n_way, k_shot = len(episodes[0]["meta_train"]), len(episodes[0]["meta_train"][0])
        out = Path(args.output_dir) / prediction_filename(n_way, k_shot)
        clash = [f for f, o in outputs.items() if o == out]
        if clash:
            raise ValueError(f"{test_file} and {clash[0]} are both {n_way}-way {k_shot}-shot and would both write {out}; "
                             "predict them into different --output_dir")
        files[test_file], outputs[test_file] = (episodes, n_way, k_shot), out
    label_table = None
    if args.method != "prototype":
        label_table = load_label_table(resolve_data_path(args.label_file, args.data_dir))
        for test_file, (episodes, _, _) in files.items():  # every relation id must have a text before encoding
            label_texts((r for e in episodes for r in e["relation"]), label_table, fallback=args.label_fallback,
                        source=str(test_file))

    # 2. Model; every distinct sentence of all files into one cache.
    model, processor = load_model(args.model_name_or_path)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    encoder = SaconEncoder(model, processor)
    cache = SentenceCache()
    rows = {test_file: episode_rows(episodes, cache) for test_file, (episodes, _, _) in files.items()}
    total = sum(len(episodes) * (n * k + 1) for episodes, n, k in files.values())
    logger.info("%d distinct sentences among the %d instances of %d file(s)", len(cache.instances), total, len(files))
    embeddings = cache.encode(encoder, args.batch_size, progress=True)

    # 3. Score and write.
    written = {}
    for test_file, (episodes, n_way, k_shot) in files.items():
        label_embeddings = None
        if label_table is not None:
            texts = label_texts((r for e in episodes for r in e["relation"]), label_table, fallback=args.label_fallback,
                                source=str(test_file))
            ids = list(texts)
            vectors = torch.cat([encoder.encode_labels([texts[r] for r in ids[s : s + args.batch_size]])
                                 for s in range(0, len(ids), args.batch_size)])
            position = {r: i for i, r in enumerate(ids)}
            label_embeddings = vectors[torch.tensor([[position[r] for r in e["relation"]] for e in episodes])]
        support_rows, query_rows = rows[test_file]
        predictions = predict_episodes(
            embeddings, support_rows, query_rows, label_embeddings, args.method, args.similarity, encoder.logit_scale,
            args.nota_logit,
        )
        path = write_predictions(predictions, outputs[test_file], n_way=n_way)
        logger.info("%s: %d episodes (%d-way %d-shot) -> %s", test_file, len(predictions), n_way, k_shot, path)
        written[str(test_file)] = str(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
