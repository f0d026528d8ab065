"""Benchmarks and tools: the step and input-pipeline benchmarks, a JPEG generator, a picture of a batch."""
