"""``lungcls-bench`` (``python -m lungcls.benchmark``): how close the project's training loop comes to what the GPU can do.

One run, one set of settings (backbone, fine-tune, batch size, image size, precision, compile),
five measurements in images/s:

(a) ``ceiling``: the model's training step alone (forward, cross-entropy, backward, optimizer step)
    on tensors already on the device, already normalised, channels_last on CUDA;
(b) ``end_to_end``: the project's Lightning loop (``LungDataModule`` + ``LungClassifier`` +
    ``pl.Trainer`` as ``lungcls.training`` builds them) in steady state, warm-up excluded, no validation;
(c) ``epoch``: one whole ``trainer.fit`` epoch including validation, after a warm-up epoch;
(d) ``naive``: the usual ImageFolder-style loop on the same PNG files (PIL decode and torchvision
    transforms in DataLoader workers, fp32);
(e) ``gradcam``: ``lungcls.explain.maps.engine.grad_cam`` on device-resident batches.

The package: ``data`` (the generated database-sized set), ``settings`` (the command line and its
per-device defaults), ``timing`` (windows and clocks), ``measure`` (the five measurements),
``summary`` (ratios, targets, the printed table) and ``__main__`` (the run). It prints a table with the ratios to the ceiling and the project's target ratios, and writes
everything to ``bench.json``. Without ``--data`` it generates (once, then reuses) a data set of the
COVID-19 Radiography Database's size and format: 21,165 grayscale 299x299 PNGs in four classes.
On a CPU it runs tiny defaults so CI can exercise every path; those numbers are not GPU numbers.

Timing rules: warm-up steps are excluded, the device is synchronised only at the edges of timed
windows (never inside the loop being measured), and the reported rate is the median over windows.
"""

