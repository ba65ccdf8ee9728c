"""Run folders: claiming one atomically, the state a run records, the files it leaves
(``metrics.json``, ``predictions.csv``, figures), and reading them back."""
