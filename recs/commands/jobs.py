"""`recs jobs submit|list|cancel|savepoint`: Flink jobs on the cluster in settings."""

from __future__ import annotations

from pathlib import Path

import typer

from conf import Settings, load_settings

jobs_app = typer.Typer(help="Submit and manage the Flink jobs (cluster from settings).", no_args_is_help=True)


@jobs_app.command("submit")
def submit(
    job: str = typer.Argument(..., help="Job name: user-embeddings | item-index | click-counts."),
    parallelism: int = typer.Option(None, "--parallelism", "-p", help="Default: flink.parallelism."),
    from_savepoint: str = typer.Option(None, "--from-savepoint", "-s", help="Savepoint path to restore."),
    model_version: str = typer.Option("", "--model-version", help="Run in this version's lane ([versions] in "
                                      "settings): its artifact, KV records, item_embeddings topic, groups."),
) -> None:
    """Submit a job with `flink run --python` (detached); prints the JobID."""
    from recs.local.flink_jobs import FlinkError
    from recs.local.flink_jobs import submit as do_submit

    try:
        settings = lane_settings(model_version)
        typer.echo(do_submit(settings, job, parallelism=parallelism, from_savepoint=from_savepoint))
    except FlinkError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def lane_settings(model_version: str) -> Settings:
    """The settings, moved into the lane of ``model_version`` ("" = the live settings); the lane's
    item_embeddings topic is created when missing. A version without a lane is a usage error."""
    from conf.settings import for_version
    from conf.versions import UnknownVersion
    from recs.local.broker import create_topics

    try:
        settings = for_version(load_settings(), model_version)
    except UnknownVersion as e:
        raise typer.BadParameter(str(e), param_hint="--model-version") from None
    if model_version:
        create_topics(settings, [settings.kafka.topics.item_embeddings])
    return settings


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@jobs_app.command("list")
def list_() -> None:
    """Jobs on the cluster: id, state, restarts, name; the last exception of a job that failed; uptime,
    checkpoints (count, age and size of the last), records in, written to KV, dead letters."""
    from recs.local.flink_jobs import FlinkError, job_activity, job_health, list_jobs

    settings = load_settings()
    try:
        jobs = list_jobs(settings)
        for j in jobs:
            h = job_health(settings, j["jid"])
            typer.echo(f"{h.job_id}  {h.state:<10} restarts={h.restarts:<3} {h.name}")
            if h.last_exception:
                typer.echo(f"    last exception: {h.last_exception}")
            a = job_activity(settings, j["jid"])
            last = ("none yet" if a.last_checkpoint_age_s is None else
                    f"last {_duration(a.last_checkpoint_age_s)} ago, {(a.last_checkpoint_bytes or 0) / 1e6:.1f} MB")
            typer.echo(f"    up {_duration(a.uptime_s)}; checkpoints {a.checkpoints} ({last}; failed "
                       f"{a.failed_checkpoints}); records in {a.records_in:,}, written {a.written:,}, "
                       f"dead letters {a.dead_letters:,}")
    except FlinkError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@jobs_app.command("cancel")
def cancel(job_id: str = typer.Argument(..., help="JobID from `recs jobs list`.")) -> None:
    """Cancel a running job."""
    from recs.local.flink_jobs import cancel as do_cancel

    do_cancel(load_settings(), job_id)
    typer.echo(f"cancelling {job_id}")


@jobs_app.command("savepoint")
def savepoint(job_id: str = typer.Argument(...), target: Path = typer.Option(Path("savepoints")),
              stop: bool = typer.Option(False, help="Cancel the job after the savepoint."),
              timeout_s: float = typer.Option(300, help="How long to wait for the savepoint.")) -> None:
    """Take a savepoint into TARGET and print its location, for `recs jobs submit -s LOCATION`."""
    from recs.local.flink_jobs import FlinkError, wait_savepoint
    from recs.local.flink_jobs import savepoint as do_savepoint

    settings = load_settings()
    try:
        trigger = do_savepoint(settings, job_id, target, cancel_job=stop)
        typer.echo(wait_savepoint(settings, job_id, trigger, timeout_s))
    except FlinkError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
