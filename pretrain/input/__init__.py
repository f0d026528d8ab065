"""Input pipelines: datasets, aug+ per image (cpu) or batched on the device (gpu, dali)."""
