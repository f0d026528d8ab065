"""``python -m pretrain.bench_data``: the old spelling of the console script ``mochi-bench-data`` (``pretrain.tools.bench_data``)."""

from .tools.bench_data import entry, main  # noqa: F401 - main too, for callers of the old module

if __name__ == "__main__":
    entry()
