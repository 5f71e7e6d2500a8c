"""The command line's actions beyond running stages: eval, predict, demo, check."""
