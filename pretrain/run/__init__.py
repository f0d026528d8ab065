"""Run plumbing every stage shares: the config, the run-folder contract, checkpoints, tracking, DDP, CLI errors."""
