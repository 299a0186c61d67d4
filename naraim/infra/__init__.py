"""What every entry point shares: the device mesh, checkpoints, the metrics log, the optimizer and its
schedules, command-line config flags and the workdir (lock, resume check, atomic writes)."""
