"""FewRel accuracy: query accuracy, or per-episode mean accuracy with a 95% CI.

Loaded by local path (``evaluate.load("<dir>/fewrel_accuracy")``), fully offline.
`evaluate` copies this script into its module cache before importing it, so it must stay
self-contained: no imports from ``modeling_sacon`` (the CI formula below matches
``modeling_sacon.data.episodes.mean_and_ci95``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy of few-shot relation classification queries (FewRel). Without `episode_ids`,
the share of queries whose predicted label equals the reference. With `episode_ids`
(one per query), the accuracy of each episode is computed first and the result is their
mean and a 95% confidence half-width, 1.96 * std / sqrt(n) with the sample std (ddof=1)
over the n episodes, as the FewRel literature reports "mean +- CI" over episodes.
In none-of-the-above (NOTA) settings the NOTA label (N) is just another label.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `int`): predicted label of each query.
    references (`list` of `int`): true label of each query (0..N-1, or N for NOTA).
    episode_ids (`list`, optional): episode of each query (any hashable ids).
Returns:
    accuracy (`float`): query accuracy, or the mean per-episode accuracy when
        `episode_ids` is given.
    ci95 (`float`, only with `episode_ids`): 95% CI half-width over episodes; NaN for a
        single episode.
    episodes (`int`, only with `episode_ids`): number of distinct episodes.
Examples:
    >>> metric = evaluate.load("modeling_sacon/metrics/fewrel_accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 1], references=[0, 1, 0, 1],
    ...                episode_ids=[0, 0, 1, 1])
    {'accuracy': 0.75, 'ci95': 0.48999999999999994, 'episodes': 2}
"""

_CITATION = """\
@inproceedings{han-etal-2018-fewrel,
    title = "{F}ew{R}el: A Large-Scale Supervised Few-Shot Relation Classification Dataset with State-of-the-Art Evaluation",
    author = "Han, Xu and Zhu, Hao and Yu, Pengfei and Wang, Ziyun and Yao, Yuan and Liu, Zhiyuan and Sun, Maosong",
    booktitle = "Proceedings of the 2018 Conference on Empirical Methods in Natural Language Processing",
    year = "2018",
    url = "https://www.aclweb.org/anthology/D18-1514",
    pages = "4803--4809"
}
@inproceedings{gao-etal-2019-fewrel,
    title = "{F}ew{R}el 2.0: Towards More Challenging Few-Shot Relation Classification",
    author = "Gao, Tianyu and Han, Xu and Zhu, Hao and Liu, Zhiyuan and Li, Peng and Sun, Maosong and Zhou, Jie",
    booktitle = "Proceedings of EMNLP-IJCNLP 2019",
    year = "2019",
    url = "https://www.aclweb.org/anthology/D19-1649",
    pages = "6251--6256"
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FewRelAccuracy(evaluate.Metric):
    """Query accuracy, optionally averaged per episode with a 95% CI."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://github.com/thunlp/FewRel"],
        )

    def _compute(
        self,
        predictions: Sequence[int],
        references: Sequence[int],
        episode_ids: Sequence[Hashable] | None = None,
    ) -> dict[str, float | int]:
        correct = np.asarray(predictions) == np.asarray(references)
        if correct.size == 0:
            raise ValueError("fewrel_accuracy needs at least one prediction")
        if episode_ids is None:
            return {"accuracy": float(correct.mean())}
        if len(episode_ids) != correct.size:
            raise ValueError(
                f"episode_ids has {len(episode_ids)} entries but there are {correct.size} predictions"
            )
        per_episode = _episode_accuracies(correct, episode_ids)
        mean, ci95 = _mean_and_ci95(per_episode)
        return {"accuracy": mean, "ci95": ci95, "episodes": len(per_episode)}


def _episode_accuracies(correct: np.ndarray, episode_ids: Sequence[Hashable]) -> list[float]:
    """Accuracy of each episode, episodes in order of first appearance."""
    hits: dict[Hashable, list[int]] = {}
    for is_correct, episode in zip(correct.tolist(), episode_ids):
        tally = hits.setdefault(episode, [0, 0])
        tally[0] += int(is_correct)
        tally[1] += 1
    return [right / total for right, total in hits.values()]


def _mean_and_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 1.96 * sample std / sqrt(n); NaN half-width for one value."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if array.size < 2:
        return mean, float("nan")
    return mean, float(1.96 * array.std(ddof=1) / math.sqrt(array.size))
