"""lungcls: fine-tune CNN backbones on chest X-rays, count missed disease, explain with Grad-CAM."""

__version__ = "0.1.0"
