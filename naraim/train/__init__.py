"""Pre-training: config, optimizer and schedules, loss, the jitted step, mesh, checkpoints, logging,
evaluation."""
