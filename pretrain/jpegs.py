"""``python -m pretrain.jpegs``: the old spelling of the console script ``mochi-jpegs`` (``pretrain.tools.jpegs``)."""

from .tools.jpegs import entry, main  # noqa: F401 - main too, for callers of the old module

if __name__ == "__main__":
    entry()
