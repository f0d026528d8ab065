"""``python -m pretrain.bench``: the old spelling of the console script ``mochi-bench`` (``pretrain.tools.bench``)."""

from .tools.bench import entry, main  # noqa: F401 - main too, for callers of the old module

if __name__ == "__main__":
    entry()
