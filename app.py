"""Gradio entry point (also the Hugging Face Spaces app_file): ``python app.py [--host H] [--port P] [--home DIR]``."""
import os

# Keep everything local before gradio/huggingface_hub are imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from cedm.cli import main  # noqa: E402

if __name__ == "__main__":
    import sys

    if os.environ.get("SPACE_ID"):  # on Hugging Face Spaces listen on all interfaces
        sys.argv[1:1] = ["--host", "0.0.0.0"]
    raise SystemExit(main(["serve", *sys.argv[1:]]))
