"""`recs probe freshness`: click -> KV and click -> answer times under a steady click load.

    recs probe freshness                                   # 1,000 clicks/s for 60 s, 60 probes, KV only
    recs probe freshness --serve-url http://127.0.0.1:8000 --rate 2000 --json

Needs the stack (`recs stack up`), item vectors in the KV store (item:{id}) for listings of --data,
and the user-embedding job (`recs jobs submit user-embeddings`); with --serve-url, `recs serve`.
Exit status 1 when the stack or the job is not there, or when some probes were not seen in time.

Defaults: 1,000 clicks/s, a moderate load for the 2-core stack (raise --rate to see where freshness
degrades); 60 probes in 60 s, one a second, so p99 is the max of 60 samples; a probe not seen in 30 s
(30 x the architecture's sub-second budget) is a stall, counted apart; 2 s of warm-up so the first
probe does not pay for the producers' first metadata round trips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer

from conf import load_settings
from conf.settings import Settings

probe_app = typer.Typer(help="Measurements against the running stack.", no_args_is_help=True)


@probe_app.command("freshness")
def freshness(
    rate: float = typer.Option(1000.0, min=0, help="Background clicks per second (0 = probes only)."),
    seconds: float = typer.Option(60.0, min=0.001, help="How long probes are sent (background runs "
                                                        "until the last probe is seen or timed out)."),
    probes: int = typer.Option(60, min=1, help="Probe clicks, one every SECONDS / PROBES, each a new user."),
    serve_url: str = typer.Option(None, "--serve-url", help="Backend base URL; also time click -> answer."),
    timeout: float = typer.Option(30.0, min=0.001, help="Per-probe timeout in seconds."),
    warmup: float = typer.Option(2.0, min=0, help="Seconds of background load before the first probe."),
    data: Path = typer.Option(None, help="Folder with listings.parquet whose item ids are clicked "
                                         "(default: <data_dir>/synth); only ids with a KV vector are used."),
    max_items: int = typer.Option(10_000, min=1, help="Distinct items the clicks spread over, at most."),
    seed: int = typer.Option(0, help="Seed of the random users and items."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Send probe clicks among background clicks and time until the KV store (and the backend) reflect them."""
    import pyarrow.parquet as pq

    from recs.local.data.schema import LISTINGS_FILE
    from recs.local.freshness import ProbeError, items_with_vectors, probe
    from recs.stores import open_store

    settings = load_settings()
    listings = (data or settings.data.data_dir / "synth") / LISTINGS_FILE
    if not listings.exists():
        _fail(f"{listings} does not exist: run `recs data synth` (or give --data)")
    ids = [str(i) for i in pq.read_table(listings, columns=["item_id"]).column("item_id").to_pylist()]
    store = open_store(settings)
    try:
        try:
            items = items_with_vectors(store, ids, max_items, _model_version(settings))
        except Exception as e:     # the store is down: say so instead of a traceback
            _fail(f"KV store ({settings.kv.backend}) does not answer: {type(e).__name__}: {e}: is the stack up?")
        if not items:
            _fail(f"none of the {len(ids)} listings in {listings} has an item vector in the KV store "
                  "(item:{id}) of the model's version: have the listings been embedded?")
        report = probe(settings, rate, seconds, probes, serve_url, items, timeout_s=timeout, warmup_s=warmup,
                       seed=seed, store=store)
    except (ProbeError, ValueError) as e:
        _fail(str(e))
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=1))
    else:
        typer.echo(format_report(report.as_dict()))
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.problems:
        raise typer.Exit(1)


def format_report(r: dict[str, Any]) -> str:
    """The p50/p99/max table of a report's ``as_dict()``."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [f"{'':<16}{'seen':>6}{'timed out':>11}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for name, key in (("click -> KV", "kv"), ("click -> answer", "serve")):
        s = r[key]
        if s is not None:
            lines.append(f"{name:<16}{s['seen']:>6}{s['timed_out']:>11}{fmt(s['p50_ms']):>10}"
                         f"{fmt(s['p99_ms']):>10}{fmt(s['max_ms']):>10}")
    lines.append(f"probes sent {r['probes_sent']}, not delivered {r['probes_failed']}; "
                 f"poll every {r['settings']['poll_ms']:g} ms, timeout {r['settings']['timeout_s']:g} s")
    if (bg := r["background"]) is not None:
        lines.append(f"background: {bg['target_per_s']:g}/s target, {bg['achieved_per_s']:.1f}/s achieved "
                     f"({bg['sent']} sent, {bg['delivery_errors']} not delivered, at most {bg['max_behind']} "
                     "behind schedule)")
    return "\n".join(lines)


def _model_version(settings: Settings) -> str | None:
    """The artifact's model_version (the job's): clicks on items of another version are skipped."""
    meta = Path(settings.model.artifact_dir) / "metadata.json"
    return str(json.loads(meta.read_text())["model_version"]) if meta.exists() else None


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
