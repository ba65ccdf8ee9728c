"""Model cards and reporting checklists written from the evidence runs leave on disk.

A card reads files only (``metrics.json``, ``audit.json``, ``generalisation.csv``, ``methods.csv``,
``status.json``, ``splits.csv``): it loads no model, so it can be written anywhere, any time later.
"""
