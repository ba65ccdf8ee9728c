"""Attribution methods a report compares (``report.methods``): one module per method, one registry.

Importing this package registers every method; `METHODS` looks them up by name."""

from lungcls.explain.maps.methods import (  # noqa: F401  (each module registers its method)
    edge,
    gradcam,
    guided_gradcam,
    integrated_gradients,
    layercam,
    occlusion,
    saliency,
    smoothgrad,
)
from lungcls.explain.maps.methods.registry import ALL, METHODS, AttributionMethod, MethodContext, finish, resolve_methods

__all__ = ["ALL", "METHODS", "AttributionMethod", "MethodContext", "finish", "resolve_methods"]
