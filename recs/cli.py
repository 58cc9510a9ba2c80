"""`recs`: the one command-line entry point.

    recs stack up|down|status        the embedded local stack (broker, Redis, Flink cluster)
    recs data synth|movielens        generate or convert data to Parquet (contract field names)
    recs produce clicks|listings     publish Parquet events to Kafka at a target rate
    recs contracts schema            print the JSON Schema of an event
    recs jobs submit|list|cancel     Flink jobs on the cluster in settings
    recs serve | recommend USER      the backend's read path (HTTP, or one answer on stdout)
    recs index serve|stats           the ANN index service
    recs train|eval|export           the two-tower model

Each area owns a module that defines its commands as module-level functions (a group as a
``typer.Typer``) and a ``register(app)`` that adds them; this file only wires them, so adding a
command never touches another area's code. The development commands (stack, data, produce, jobs)
import ``recs.local`` only when run. Settings are loaded once here, at the edge.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="recs",
    help="recstream: real-time personalized recommendations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands. Optional ones may be absent while an area is being built.
_COMMAND_MODULES = (
    "recs.commands.stack",
    "recs.commands.data",
    "recs.commands.produce",
    "recs.commands.contracts",
    "recs.commands.jobs",
    "recs.commands.serving",   # serve, recommend
    "recs.commands.probe",     # probe freshness
    "recs.commands.replay",    # replay clicks|listings
    "models.cli",              # train, eval, export
    "index.cli",               # index serve, index stats
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as e:
        if e.name != _name:  # the module exists but one of its imports is missing: a real error
            raise
        continue
    _module.register(app)


if __name__ == "__main__":
    app()
