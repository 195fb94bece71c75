"""Model cards for SaCon checkpoints, rendered from the Jinja template `modeling_sacon/templates/sacon_model_card.md`.

The template ships inside the package (`package_data`), so an installed wheel renders cards as a checkout does. Every
statement about training (MLM per tower, entity blanking, MLM probability, corpus) is rendered from the values given;
a value left `None` is unknown and its sentence is left out, never filled with a default.


`render_model_card(**fields)` returns a `huggingface_hub.ModelCard` whose YAML front matter holds `library_name`,
`tags`, `base_model`, `datasets`, `license` and, when evaluation results are given, a `model-index` with the FewRel
accuracies. `ModelCard.validate()` posts the card to the Hub's `/api/validate-yaml` (network); the card is therefore
validated *locally* here (:func:`validate_card_metadata`: the front matter must parse as YAML and load into
`huggingface_hub.ModelCardData`, which checks the model-index), and `validate="hub"` additionally asks the Hub.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = [
    "DEFAULT_EVAL_DESCRIPTION",
    "DEFAULT_TEMPLATE",
    "EMBEDDED_CORPUS_DESCRIPTION",
    "EMBEDDED_CORPUS_DESCRIPTIONS",
    "blanking_description",
    "config_card_fields",
    "default_template_path",
    "fewrel_eval_result",
    "mlm_description",
    "render_model_card",
    "validate_card_metadata",
]

DEFAULT_TEMPLATE = "sacon_model_card.md"
TEMPLATE_ENV = "SACON_CARD_TEMPLATE"
BASE_TAGS = ["sacon", "relation-extraction", "few-shot", "contrastive-learning"]
EMBEDDED_CORPUS_DESCRIPTIONS = {
    "v2": (
        "The package's embedded `pretrain_v2` corpus: 39,083 English sentences of 912 Wikidata relations, none a FewRel "
        "1.0 validation/test or FewRel 2.0 NYT relation and no FewRel evaluation sentence. 105 dense relations (>= 20 "
        "sentences each, 36,354 in all: Re-DocRED, Wiki80 / CFRL FewRel-train sentences, Wikidata-TekGen, KnowledgeNet) "
        "and 807 long-tail relations (2 to 17 sentences each, 2,729 in all, mostly crowd-written one-sentence "
        "verbalisations of Wikidata triples from Rel2Text). Relation names and descriptions for all 912 come from "
        "FewRel's `pid2name.json` and Wikidata. Parts are CC BY-SA 4.0. It stands in for the paper's large distantly "
        "supervised Wikipedia corpus."
    ),
    "v2_dense": (
        "The 105 dense relations of the package's embedded `pretrain_v2` corpus (36,354 English sentences, >= 20 per "
        "relation: Re-DocRED, Wiki80 / CFRL FewRel-train sentences, Wikidata-TekGen, KnowledgeNet), none a FewRel "
        "evaluation relation; relation names and descriptions from FewRel's `pid2name.json` and Wikidata."
    ),
    "v1": (
        "The package's earlier embedded pre-training corpus: sentences from the human-annotated Re-DocRED documents "
        "(English Wikipedia introductions labelled with Wikidata properties; 53 relations) and a sample of FewRel 1.0's "
        "64 training relations (Wiki80 sentences, about 120 per relation), merged where they share a relation (82 "
        "relations). Relation texts come from FewRel's `pid2name.json` (plus Wikidata names and descriptions for 7 "
        "date-valued properties)."
    ),
}
EMBEDDED_CORPUS_DESCRIPTION = EMBEDDED_CORPUS_DESCRIPTIONS["v2"]
DEFAULT_EVAL_DESCRIPTION = (
    "Seeded N-way K-shot episodes (one query per relation) on FewRel relations unseen in pre-training, scored without "
    "fine-tuning: each relation's prototype is the mean `[h ; t]` of its support sentences, and a query takes the "
    "relation of the most cosine-similar prototype. Accuracy is the mean over episodes, with a 95% confidence interval."
)
_FEWREL_SPLITS = {"val_wiki": "FewRel 1.0 validation (val_wiki)", "val_pubmed": "FewRel 2.0 validation (val_pubmed)"}


def default_template_path() -> Path:
    """`$SACON_CARD_TEMPLATE`, else the template shipped in the package (`modeling_sacon/templates/`)."""
    env = os.environ.get(TEMPLATE_ENV)
    candidate = Path(env) if env else Path(__file__).resolve().parents[1] / "templates" / DEFAULT_TEMPLATE
    if not candidate.is_file():
        source = f"${TEMPLATE_ENV}" if env else "the package (reinstall it: the template is package data)"
        raise FileNotFoundError(f"model card template {candidate} not found, from {source}; pass template_path")
    return candidate


def _probability(value: float) -> str:
    return f"{float(value):g}"


def mlm_description(
    sentence_mlm_weight: float | None, label_mlm_weight: float | None, mlm_probability: float | None
) -> str:
    """The objective's MLM clause, from the weights the model trained with (None: unknown, nothing is said)."""
    if sentence_mlm_weight is None or label_mlm_weight is None:
        return ""
    towers = [name for name, weight in (("sentence", sentence_mlm_weight), ("label", label_mlm_weight)) if weight > 0]
    if not towers:
        return (" No masked language modelling: both MLM weights are 0, so neither encoder has an MLM term and their "
                "inputs are not masked.")
    where = "both encoders" if len(towers) == 2 else f"the {towers[0]} encoder only"
    weights = f"weights {sentence_mlm_weight:g} (sentences) and {label_mlm_weight:g} (labels)"
    chosen = "" if mlm_probability is None else f"tokens chosen with probability {_probability(mlm_probability)}; "
    return (f" Plus masked language modelling on {where} ({weights}; {chosen}markers, blanks and special tokens are "
            "never masked).")


def blanking_description(blank_probability: float | None) -> str:
    """The entity-blanking sentence (None: unknown, nothing is said)."""
    if blank_probability is None:
        return ""
    if float(blank_probability) == 0.0:
        return "Entity mentions are never blanked."
    return (f"Each entity mention is replaced by `[BLANK]` with probability {_probability(blank_probability)}, drawn "
            "anew every time a sentence is served, so the encoders cannot rely on entity names alone.")


def fewrel_eval_result(
    setting: str,
    accuracy: float,
    *,
    split: str = "val_wiki",
    method: str = "prototype",
    ci95: float | None = None,
    episodes: int | None = None,
    pool: int | None = None,
) -> EvalResult:
    """One FewRel accuracy as a model-index entry; `accuracy` is a fraction in [0, 1], written as a percentage.

    `pool`: episodes were drawn from the first `pool` sentences of each relation (recorded in the metric's args).
    """
    if not 0.0 <= float(accuracy) <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    name = f"{setting} accuracy (%)" + ("" if method == "prototype" else f", {method}")
    args = {"method": method}
    if episodes is not None:
        args["episodes"] = int(episodes)
    if pool:
        args["sentences_per_relation"] = int(pool)
    return EvalResult(
        task_type="text-classification",
        task_name="Few-shot relation classification",
        dataset_type="few_rel",
        dataset_name=_FEWREL_SPLITS.get(split, f"FewRel ({split})"),
        dataset_split=split,
        metric_type="accuracy",
        metric_value=round(100.0 * float(accuracy), 2),
        metric_name=name,
        metric_args=args,
    )


def _as_eval_result(item: EvalResult | Mapping[str, Any]) -> EvalResult:
    if isinstance(item, EvalResult):
        return item
    if not isinstance(item, Mapping):
        raise TypeError(f"eval_results entries must be EvalResult or dicts, got {type(item).__name__}")
    if "task_type" in item:  # EvalResult's own fields
        return EvalResult(**item)
    missing = [key for key in ("setting", "accuracy") if key not in item]
    if missing:
        raise ValueError(f"eval result {dict(item)!r} lacks {missing} (give setting, accuracy[, split, method, ci95, episodes])")
    options = {k: item[k] for k in ("split", "method", "ci95", "episodes", "pool") if item.get(k) is not None}
    return fewrel_eval_result(item["setting"], item["accuracy"], **options)


def _eval_rows(items: Sequence[EvalResult | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the card's results table (accuracy and CI in percent)."""
    rows = []
    for item in items:
        if isinstance(item, Mapping) and "setting" in item:
            ci = item.get("ci95")
            rows.append({
                "setting": item["setting"],
                "split": item.get("split", "val_wiki"),
                "method": item.get("method", "prototype"),
                "accuracy": f"{100.0 * float(item['accuracy']):.2f}",
                "ci95": "n/a" if ci is None else f"{100.0 * float(ci):.2f}",
                "episodes": item.get("episodes", "n/a"),
            })
        else:
            result = _as_eval_result(item)
            rows.append({
                "setting": result.metric_name or result.metric_type,
                "split": result.dataset_split or result.dataset_name,
                "method": (result.metric_args or {}).get("method", "n/a"),
                "accuracy": result.metric_value,
                "ci95": "n/a",
                "episodes": (result.metric_args or {}).get("episodes", "n/a"),
            })
    return rows


def validate_card_metadata(card: ModelCard | str) -> dict[str, Any]:
    """Offline check of a card's front matter; returns it as a dict, raises `ValueError` naming the problem.

    The YAML must parse, be a mapping, and load into `ModelCardData` (which validates `model-index`); SaCon cards
    must also declare `library_name: transformers` and the `sacon` tag.
    """
    text = str(card)
    if not text.startswith("---\n"):
        raise ValueError("the model card has no YAML front matter (it must start with '---')")
    try:
        header = text.split("---\n", 2)[1]
        data = yaml.safe_load(header)
    except (IndexError, yaml.YAMLError) as err:
        raise ValueError(f"the model card's YAML front matter does not parse: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"the model card's YAML front matter must be a mapping, got {type(data).__name__}")
    ModelCardData(**dict(data))  # raises ValueError on a malformed model-index
    if data.get("library_name") != "transformers":
        raise ValueError(f"library_name must be 'transformers', got {data.get('library_name')!r}")
    if "sacon" not in (data.get("tags") or []):
        raise ValueError("the 'sacon' tag is missing")
    return data


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def render_model_card(
    template_path: str | os.PathLike | None = None,
    *,
    model_name: str = "sacon",
    model_id: str | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    language: str | list[str] = "en",
    tags: Sequence[str] = (),
    eval_results: Sequence[EvalResult | Mapping[str, Any]] | None = None,
    eval_description: str | None = None,
    training: Mapping[str, Any] | None = None,
    corpus_description: str | None = None,
    num_relations: int | None = None,
    num_instances: int | None = None,
    seen_relations: Sequence[str] | None = None,
    excludes_fewrel_eval: bool | None = None,
    share_encoders: bool | None = None,
    blank_probability: float | None = None,
    mlm_probability: float | None = None,
    sentence_mlm_weight: float | None = None,
    label_mlm_weight: float | None = None,
    validate: str | None = "local",
    **extra_fields: Any,
) -> ModelCard:
    """Render the SaCon model card.

    Args:
        template_path: a Jinja markdown template (default :func:`default_template_path`).
        model_name: title and model-index name; model_id: the repo id in the loading snippets (default model_name).
        base_model / datasets / license / language / tags: YAML metadata (`sacon`, `relation-extraction`,
            `few-shot` tags are always there; `library_name` is `transformers`).
        eval_results: `huggingface_hub.EvalResult`s, or dicts `{"setting": "5-1", "accuracy": 0.85 (fraction),
            "ci95": 0.01, "episodes": 1000, "split": "val_wiki", "method": "prototype", "pool": None}`; they fill `model-index`
            and the card's results table.
        training: option -> value rows of the protocol table (steps, batch, learning rates, ...).
        corpus_description / num_relations / num_instances / seen_relations / excludes_fewrel_eval: the data section.
        share_encoders / blank_probability / mlm_probability / sentence_mlm_weight / label_mlm_weight: what the run
            did (`SaconTrainer.create_model_card` reads them from the model's config and the data collator). None:
            unknown, and the card says nothing about it.
        validate: "local" (default) checks the YAML offline with :func:`validate_card_metadata`; "hub" also calls
            `ModelCard.validate()` (needs the Hub endpoint); None skips.
        extra_fields: passed to the template as variables.
    """
    template = Path(template_path) if template_path is not None else default_template_path()
    results = [_as_eval_result(item) for item in (eval_results or [])]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        language=language,
        library_name="transformers",
        license=license,
        tags=list(dict.fromkeys([*BASE_TAGS, *tags])),
        metrics=["accuracy"] if results else None,
        eval_results=results or None,
        model_name=model_name if results else None,
    )
    if eval_description is None:
        eval_description = DEFAULT_EVAL_DESCRIPTION
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        model_id=model_id or model_name,
        base_model=base_model if isinstance(base_model, str) else None,
        training={key: _format(value) for key, value in (training or {}).items()},
        eval_rows=_eval_rows(eval_results or []),
        eval_description=eval_description,
        corpus_description=corpus_description,
        num_relations=num_relations,
        num_instances=num_instances,
        seen_relations=list(seen_relations) if seen_relations else None,
        excludes_fewrel_eval=excludes_fewrel_eval,
        share_encoders=share_encoders,
        mlm_description=mlm_description(sentence_mlm_weight, label_mlm_weight, mlm_probability),
        blanking_description=blanking_description(blank_probability),
        **extra_fields,
    )
    if validate not in (None, "local", "hub"):
        raise ValueError(f"validate must be 'local', 'hub' or None, got {validate!r}")
    if validate is not None:
        validate_card_metadata(card)
    if validate == "hub":
        card.validate()
    return card


def config_card_fields(config: Any) -> dict[str, Any]:
    """The card fields a SaCon config records (a config object, a dict, or a checkpoint directory with config.json)."""
    if isinstance(config, (str, os.PathLike)):
        config_file = Path(config) / "config.json"
        if not config_file.is_file():
            return {}
        config = json.loads(config_file.read_text())
    read = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key, None)
    fields = {key: read(key) for key in ("sentence_mlm_weight", "label_mlm_weight", "share_encoders")}
    return {key: value for key, value in fields.items() if value is not None}


EVAL_SECTION_START = "<!-- fewrel-evaluation:start -->"
EVAL_SECTION_END = "<!-- fewrel-evaluation:end -->"


def update_model_card_results(
    checkpoint_dir: str | os.PathLike,
    results: Mapping[str, Mapping[str, Any]],
    *,
    splits: Mapping[str, str] | None = None,
    method: str = "prototype",
    seed: int = 0,
    command: str | None = None,
) -> ModelCard:
    """Write FewRel results (as `examples/evaluate_fewrel.py` returns them) into `checkpoint_dir/README.md`.

    `results` maps setting names (`5-1`, `zs-5`, `pubmed/5-1`, ...) to {"accuracy", "ci95", "episodes"};
    `splits` maps a name prefix (`""`, `"pubmed/"`) to its split name (default val_wiki / val_pubmed). The card's
    `model-index` is replaced by these results and a marked results section is replaced (or appended), so running
    the evaluation again updates the card instead of piling up tables. A missing card is rendered fresh.
    """
    path = Path(checkpoint_dir) / "README.md"
    if path.is_file():
        card = ModelCard.load(path)
    else:
        card = render_model_card(model_name=Path(checkpoint_dir).name, **config_card_fields(checkpoint_dir))
    splits = dict(splits or {"": "val_wiki", "pubmed/": "val_pubmed"})
    items = []
    for name, result in results.items():
        prefix = next((p for p in sorted(splits, key=len, reverse=True) if name.startswith(p)), "")
        setting = name[len(prefix):]
        items.append({
            "setting": setting, "split": splits[prefix], "accuracy": float(result["accuracy"]),
            "ci95": result.get("ci95"), "episodes": result.get("episodes"),
            "method": "zero_shot" if setting.startswith("zs-") else method,
        })
    card.data.eval_results = [_as_eval_result(item) for item in items]
    card.data.metrics = ["accuracy"]
    card.data.model_name = card.data.model_name or Path(checkpoint_dir).resolve().name
    lines = [
        EVAL_SECTION_START,
        "## FewRel evaluation",
        "",
        f"Seeded episodes (seed {seed}) scored on cached embeddings by `examples/evaluate_fewrel.py`"
        + (f": `{command}`" if command else "") + ".",
        "",
        "| setting | split | method | accuracy (%) | 95% CI | episodes |",
        "|---|---|---|---:|---:|---:|",
        *(
            f"| {row['setting']} | {row['split']} | {row['method']} | {row['accuracy']} | ± {row['ci95']} | {row['episodes']} |"
            for row in _eval_rows(items)
        ),
        EVAL_SECTION_END,
    ]
    section = "\n".join(lines)
    text = card.text
    if EVAL_SECTION_START in text and EVAL_SECTION_END in text:
        before, rest = text.split(EVAL_SECTION_START, 1)
        text = before + section + rest.split(EVAL_SECTION_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    card = ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
    validate_card_metadata(card)
    card.save(path)
    return card
