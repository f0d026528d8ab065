"""Synthetic hard negatives: MoCHi's two kinds and SynCo's others, drawn from one hard set per
query, and a reweighted control. The kinds and their order: ``registry``; one module each."""
