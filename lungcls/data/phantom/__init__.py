"""A deterministic synthetic chest X-ray phantom with lung and lesion masks (the demo data)."""

from lungcls.data.phantom.render import FINDINGS, DemoCase, render_demo_case

__all__ = ["FINDINGS", "DemoCase", "render_demo_case"]
