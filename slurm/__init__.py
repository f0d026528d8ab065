"""Cluster profiles, submitit executors and the job callables that wrap pretraining and evaluation."""
