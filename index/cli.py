"""Commands: ``recs index serve|stats`` (the backend's own ``recs serve|recommend``: recs/commands/serving.py).

    recs index serve                      # restore the latest snapshot, replay item_embeddings, serve gRPC
    recs index serve --no-feed --kind Flat --port 50052
    recs index serve --model-version tt-0123abcd4567   # a new version's own index (conf/versions.py)
    recs index stats                      # Stats of every replica in index.shards

Settings are loaded here, at the edge, and passed into constructors.
"""

from __future__ import annotations

import json
import logging
import signal
import threading

import typer

from conf.settings import Settings, load_settings, override, with_overrides

log = logging.getLogger(__name__)

index_app = typer.Typer(help="The ANN index service (FAISS over gRPC, fed from item_embeddings).",
                        no_args_is_help=True)


def _settings(model_version: str = "", **index: object) -> Settings:
    from conf.settings import for_version
    from conf.versions import UnknownVersion

    try:
        s = for_version(load_settings(), model_version)
    except UnknownVersion as e:
        raise typer.BadParameter(str(e), param_hint="--model-version") from None
    over = {k: v for k, v in index.items() if v is not None}
    return with_overrides(s, index=over) if over else s


@index_app.command("serve")
def index_serve(
    kind: str = typer.Option(None, help="Flat | HNSW | IVFFlat | IVFPQ (default: index.kind)."),
    port: int = typer.Option(None, help="gRPC port (default: index.port; 0 = any free port)."),
    replica_id: str = typer.Option(None, help="Names this replica's snapshots (index.replica_id)."),
    feed: bool = typer.Option(True, "--feed/--no-feed", help="Apply the item_embeddings topic."),
    restore: bool = typer.Option(True, "--restore/--no-restore", help="Start from the latest snapshot."),
    model_version: str = typer.Option("", "--model-version", help="Serve this version's lane ([versions]): "
                                      "its item_embeddings topic, address, snapshots; only its vectors."),
) -> None:
    """Serve the index over gRPC: restore snapshot -> replay topic -> SERVING; snapshot on exit."""
    import faiss

    from index import snapshot
    from index.ann import ItemIndex
    from index.feeder import Feeder
    from index.heap import cap_arenas
    from index.server import IndexServer

    settings = _settings(model_version, kind=kind, port=port, replica_id=replica_id)
    cap_arenas(settings.index.malloc_arenas)   # before any thread starts: see index/heap.py
    # FAISS OpenMP threads of this process role ([threads] index_service), set at start
    faiss_threads = settings.threads.index_service.faiss_omp
    faiss.omp_set_num_threads(faiss_threads)
    s = override(settings.index, {"omp_threads": faiss_threads})  # ItemIndex sets it too
    restored = snapshot.load_latest(s) if restore else None
    index, offsets = restored if restored else (ItemIndex(s), {})
    feeder = Feeder(index, settings.kafka, s, offsets=offsets) if feed else None
    server = IndexServer(s, index, extra_stats=feeder.stats if feeder else None)
    server.start(serving=feeder is None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = None
    if feeder is not None:
        thread = threading.Thread(target=feeder.run, args=(stop,), name="feeder", daemon=True)
        thread.start()
        while not stop.is_set() and not feeder.caught_up.wait(0.5):
            pass
        log.info("caught up with %s (%d records applied): SERVING", feeder.topic, feeder.applied)
        server.set_serving(True)
    typer.echo(f"index service on {s.host}:{server.port} ({len(index)} items)")
    stop.wait()
    log.info("stopping")
    server.set_serving(False)
    if thread is not None and feeder is not None:
        thread.join(10)
        feeder.save_snapshot()
        feeder.close()
    server.stop()


@index_app.command("stats")
def index_stats(model_version: str = typer.Option("", "--model-version", help="That version lane's index.")) -> None:
    """Print Stats of every replica of every shard in index.shards."""
    from google.protobuf.json_format import MessageToDict

    from index.client import GrpcIndexClient

    client = GrpcIndexClient(_settings(model_version).index)
    typer.echo(json.dumps([MessageToDict(s) for s in client.stats()], indent=1))


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
