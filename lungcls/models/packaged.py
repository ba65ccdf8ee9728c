"""A trained classifier packaged for use outside lungcls (TorchScript or ONNX).

The packaged network takes what lungcls's decoder produces, 8-bit grayscale images at the model's
working size (``uint8 [B, 1, S, S]``), and returns class probabilities ``[B, C]``: the scaling to
[0, 1], the channel replication, the normalisation and the softmax are inside the graph, all from
the checkpoint. What cannot be a tensor operation (decoding PNG/JPEG/DICOM to grayscale, the
antialiased resize to S x S) is described in the metadata the file carries, with the class names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lungcls.models.module import normalize_input

METADATA_NAME = "lungcls.json"  # TorchScript extra file / ONNX metadata key
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
DECODING = ("decode to 8-bit grayscale as lungcls does (PNG/JPEG: 16-bit scaled by its 12- or 16-bit range, colour to "
            "luminance; DICOM: modality LUT, VOI LUT or window, MONOCHROME1 inverted, scaled by BitsStored), then resize "
            "to image_size x image_size, bilinear with antialiasing (PIL's BILINEAR)")


class PackagedClassifier(nn.Module):
    """uint8 grayscale ``[B, 1, S, S]`` -> probabilities ``[B, C]``: the classifier's network and its
    normalisation buffers, without the training machinery around them."""

    def __init__(self, classifier: Any):
        super().__init__()
        self.net = classifier.net.eval()
        self.register_buffer("mean", classifier.input_mean.detach().clone())
        self.register_buffer("std", classifier.input_std.detach().clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = normalize_input(image.float() / 255.0, self.mean, self.std)
        return torch.softmax(self.net(x), dim=1)


def metadata(model: Any, checkpoint_sha256: str, fmt: str) -> dict[str, Any]:
    """What a user of the exported file needs to feed it and read its output."""
    size = model.info.image_size
    import lungcls

    return {
        "format": fmt,
        "lungcls_version": getattr(lungcls, "__version__", None),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 1, size, size], "preprocessing": DECODING},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(model.class_names)], "softmax": True},
        "image_size": size,
        "class_names": list(model.class_names),
        "normal_class": model.normal_class,
        "normalization": {"mean": list(model.info.mean), "std": list(model.info.std), "applied_in_graph": True},
        "backbone": model.info.backbone,
        "finetune": model.info.finetune,
        "checkpoint_sha256": checkpoint_sha256,
    }
