"""`cedm serve`: start the Gradio app (same as ``python app.py``)."""
from cedm.commands import add_home

HELP = "start the web app (Gradio) on the demo workspace"


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860)
    add_home(p)


def run(args) -> int:
    from cedm.ui import serve

    serve(host=args.host, port=args.port, home=args.home)
    return 0
