"""Ablation grids over MoCHi settings, and the tables and plots built from them."""
