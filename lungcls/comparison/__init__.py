"""Comparing runs (``lungcls-compare``): ranking by missed disease, k-fold folding, paired tests
between two runs on the same images, and the ranked-runs chart."""
