"""`cedm serve`: start the Gradio app (same as ``python app.py``)."""
from cedm.commands import add_home

HELP = "start the web app (Gradio) on the demo workspace"


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--public", action="store_true", default=None,
                   help="public server: each visitor gets a private, temporary area with budgets (automatic on "
                        "Hugging Face Spaces). Default: local mode, the app and the CLI share the home and keep "
                        "everything")
    add_home(p)


def run(args) -> int:
    from cedm.ui import serve

    serve(host=args.host, port=args.port, home=args.home, public=args.public)
    return 0
