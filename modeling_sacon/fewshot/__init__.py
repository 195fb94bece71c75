"""Few-shot use of a SaCon encoder: the cached-embedding FewRel evaluator and the relation classifier."""
