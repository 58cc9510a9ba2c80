"""`recs serve`, `recs recommend USER`: the backend's read path over HTTP or from the shell.

    recs serve                            # HTTP backend on serve.host:serve.port
    recs recommend u42 --k 10             # the same read path, one call, JSON on stdout
"""

from __future__ import annotations

import json

import typer

from conf.settings import load_settings


def serve(
    host: str = typer.Option(None, help="Bind address (default: serve.host)."),
    port: int = typer.Option(None, help="Port (default: serve.port)."),
) -> None:
    """Run the HTTP backend: GET /recommendations/{user_id}?k=20, /healthz, /metrics."""
    from recs.serving import open_read_path
    from recs.serving.app import create_app, run

    settings = load_settings()
    run(create_app(open_read_path(settings)), settings.serve, host, port)


def recommend(
    user_id: str = typer.Argument(..., help="The user to recommend for."),
    k: int = typer.Option(None, "--k", help="How many items (default: serve.default_k)."),
) -> None:
    """Recommend for one user with the same read path as the HTTP backend; JSON on stdout."""
    from recs.serving import open_read_path

    rp = open_read_path(load_settings())
    typer.echo(json.dumps(rp.recommend(user_id, k).as_dict(), indent=1))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("recommend")(recommend)
