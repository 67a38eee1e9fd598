"""The Gradio app: a thin layer over the library (every number it shows comes from a library call)."""
import os

# no analytics/telemetry (model downloads follow cedm.hub's policy, offline by default)
for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)

from cedm.ui.app import build_app, serve  # noqa: E402

__all__ = ["build_app", "serve"]
