"""What ``lungcls-train`` builds from its config: the data module and model, the Trainer with its
callbacks and loggers, the resume checks, and scoring the kept checkpoint."""
