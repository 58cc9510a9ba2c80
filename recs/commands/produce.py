"""`recs produce clicks|listings`: publish Parquet events to Kafka at a target rate."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from conf import load_settings


def produce_cmd(
    what: str = typer.Argument(..., help="clicks or listings"),
    data: Path = typer.Option(None, help="Folder with clicks.parquet / listings.parquet "
                                         "(default: <data_dir>/synth)."),
    rate: float = typer.Option(0.0, min=0, help="Events per second; 0 = as fast as possible."),
    limit: int = typer.Option(None, min=1, help="Send at most this many events."),
    retime: bool = typer.Option(False, help="Stamp each event with the send time (freshness tests)."),
    topic: str = typer.Option(None, help="Topic (default: from settings)."),
) -> None:
    """Publish events keyed by user_id (clicks) or item_id (listings); prints the achieved rate."""
    from recs.local.produce import produce

    kinds = {"clicks": "click", "listings": "listing"}
    if what not in kinds:
        raise typer.BadParameter(f"expected clicks or listings, got {what!r}")
    settings = load_settings()
    report = produce(settings, kinds[what], data or settings.data.data_dir / "synth", rate=rate,
                     limit=limit, retime=retime, topic=topic)
    typer.echo(json.dumps(report.as_dict()))
    if report.delivery_errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("produce")(produce_cmd)
