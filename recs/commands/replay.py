"""`recs replay clicks|listings`: run a job bounded over a range of its topic (recs/local/replay.py)."""

from __future__ import annotations

from datetime import datetime

import typer


def parse_time(text: str | None) -> int | None:
    """None, "earliest" -> None; epoch milliseconds; or an ISO 8601 time (UTC when no zone is given)."""
    if text is None or text == "earliest":
        return None
    if text.isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected 'earliest', epoch milliseconds or an ISO 8601 time") from None
    if t.tzinfo is None:
        from datetime import UTC

        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def replay_cmd(
    kind: str = typer.Argument(..., help="clicks (user-embeddings job) | listings (item-index job)"),
    start: str = typer.Option("earliest", "--from", help="earliest | epoch ms | ISO 8601 (Kafka record time)"),
    end: str = typer.Option(None, "--to", help="epoch ms | ISO 8601; default: every record there now"),
    timeout_s: float = typer.Option(3600, help="cancel the replay job if it has not finished by then"),
    model_version: str = typer.Option("", "--model-version", help="replay into this version's lane ([versions]): "
                                      "its artifact, KV records and item_embeddings topic; the live ones untouched"),
) -> None:
    """Replay a range of a topic through its job (bounded; the same idempotent sinks; the live job's
    offsets untouched) and wait until it has finished."""
    from recs.commands.jobs import lane_settings
    from recs.local.flink_jobs import FlinkError
    from recs.local.replay import ReplayError, replay

    try:
        result = replay(lane_settings(model_version), kind, parse_time(start), parse_time(end), timeout_s,
                        progress=typer.echo)
    except (ReplayError, FlinkError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{result.state}: {result.records:,} records in {result.seconds:.1f} s (job {result.job_id or '-'})")


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_cmd)
