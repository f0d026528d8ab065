"""``python -m pretrain.knn``: the old spelling of the console script ``mochi-knn`` (``pretrain.eval.knn``)."""

from .eval.knn import entry, main  # noqa: F401 - main too, for callers of the old module

if __name__ == "__main__":
    entry()
