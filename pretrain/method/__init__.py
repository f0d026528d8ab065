"""The method's math: MoCo v2, MoCHi's mixing, the losses (InfoNCE, debiased, HCL), the encoders and the
paper's analyses. Imports nothing else of the project."""
