"""Data for SaCon: corpus loaders and validation (`corpus`), the authors' (CP) format and JSON Lines streamed into
Arrow (`formats`), FewRel and the pre-training corpus on the Hub (`hub`), the strict protocol's leakage checks
(`protocol`), the pre-training collator (`collator`), seeded FewRel
episodes (`episodes`) and episodic fine-tuning datasets (`episodic`). Nothing here ships with a checkpoint."""

from .corpus import *  # noqa: F401,F403
from .corpus import PRETRAIN_CORPUS_FILES, PRETRAIN_LABEL_FILES, VAL_WIKI_FILE, _rows_to_dataset  # noqa: F401
from .corpus import __all__ as _corpus_all
from .formats import detect_corpus_format, iter_corpus_rows, load_relation_corpus, relation_corpus_label_table  # noqa: F401
from .hub import load_fewrel_source, load_hub_few_rel  # noqa: F401
from .protocol import FEWREL_TEST_RELATIONS, EvaluationLeakageError, check_relation_leakage, check_sentence_overlap  # noqa: F401

__all__ = [*_corpus_all, "detect_corpus_format", "iter_corpus_rows", "load_relation_corpus", "relation_corpus_label_table",
           "load_fewrel_source", "load_hub_few_rel",
           "EvaluationLeakageError", "check_relation_leakage", "check_sentence_overlap"]
