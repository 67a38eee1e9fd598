"""Gradio entry point (also the Hugging Face Spaces app_file):
``python app.py [--host H] [--port P] [--home DIR] [--allow-downloads]``.

Downloads follow cedm.hub's policy: off by default, on with --allow-downloads or CEDM_ALLOW_DOWNLOADS=1, and on a
Space (SPACE_ID set), where nothing is fetched until a visitor picks a model that needs it.
"""
import os

# No analytics or telemetry: set before gradio/huggingface_hub are imported (cedm.hub does the same).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from cedm.cli import main  # noqa: E402

if __name__ == "__main__":
    import sys

    if os.environ.get("SPACE_ID"):  # on Hugging Face Spaces listen on all interfaces
        sys.argv[1:1] = ["--host", "0.0.0.0"]
    raise SystemExit(main(["serve", *sys.argv[1:]]))
