"""Quickstart: build SaCon from two pretrained encoders and rank FewRel relation labels for a few sentences.

    python examples/quickstart.py                       # the packaged, offline all-MiniLM-L6-v2
    python examples/quickstart.py --model_name_or_path org/sacon-base   # a pre-trained SaCon checkpoint

An untrained composition ranks labels by the backbone's similarity only; a SaCon checkpoint is what makes the
scores meaningful (see examples/pretrain.py).
"""

from __future__ import annotations

import argparse

import torch

from modeling_sacon.data import development_data_dir, get_data_dir, label_texts, load_fewrel_json, load_label_table
from modeling_sacon.utils.loading import load_sacon_model

DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="a SaCon checkpoint (default: compose MiniLM)")
    parser.add_argument("--sentences", type=int, default=4, help="how many val_wiki sentences to classify")
    parser.add_argument("--top_k", type=int, default=3)
    parser.add_argument("--data_dir", default=DATA_DIR, help="the FewRel files' directory (fewrel/)")
    args = parser.parse_args()

    # 1. Model and processor: a SaCon checkpoint, or two copies of the offline backbone composed on the spot.
    model, processor = load_sacon_model(args.model_name_or_path)

    # 2. Data: FewRel val_wiki sentences and the label texts of its 16 relations.
    data_dir = get_data_dir(args.data_dir)
    data = load_fewrel_json(data_dir / "fewrel" / "val_wiki.json")
    relations = list(dict.fromkeys(data["relation"]))
    labels = label_texts(relations, load_label_table(data_dir / "fewrel" / "pid2name.json"))
    picks = data.select(range(0, len(data), len(data) // args.sentences)[: args.sentences])

    # 3. Encode both towers once and rank the labels of every sentence by scaled cosine.
    with torch.no_grad():
        sentence_inputs = processor.encode_instances(list(picks))
        label_inputs = processor.encode_labels([labels[r] for r in relations])
        out = model(**sentence_inputs, label_input_ids=label_inputs["input_ids"], label_attention_mask=label_inputs["attention_mask"])
    for row, scores in zip(picks, out.logits_per_sentence):
        sentence = " ".join(row["tokens"])
        print(f"\n{sentence}\n  head={row['head']['name']!r} tail={row['tail']['name']!r} gold={row['relation']} ({labels[row['relation']][0]})")
        top = scores.topk(args.top_k)
        for score, index in zip(top.values.tolist(), top.indices.tolist()):
            mark = "*" if relations[index] == row["relation"] else " "
            print(f"  {mark} {score:6.2f}  {relations[index]:6s} {labels[relations[index]][0]}")


if __name__ == "__main__":
    main()
