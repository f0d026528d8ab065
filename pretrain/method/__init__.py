"""The method's math: MoCo v2, MoCHi's mixing, the encoders and the paper's analyses. Imports nothing else of the project."""
