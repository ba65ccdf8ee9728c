"""``lungcls-audit``: what in a data set could make an evaluation flatter a model before any model
is trained. Duplicates (exact and near), duplicates filed under different labels, duplicates that a
split would put on both sides of train/test, and shortcuts: a quick classifier that sees only what
lies outside the lungs (the border band, or outside the lung masks) and still tells the classes
apart means the labels can be read from the source, not from the lungs.

- ``scan``: one pass over the files (fingerprints, statistics and probe features per image);
- ``findings``: duplicates, label conflicts, cross-split groups, statistics per class and source;
- ``probe``: the shortcut probe (cross-validated, with a bootstrap interval);
- ``outputs``: audit.json, audit.md, the console summary and ``audit.fail_on``.
"""
