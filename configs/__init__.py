"""Config files as code (scripts take `--config configs/<file>.py[:variants]`)."""
