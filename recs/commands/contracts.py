"""`recs contracts schema click|listing`: the JSON Schema the parser enforces."""

from __future__ import annotations

import json

import typer

from conf import load_settings

contracts_app = typer.Typer(help="Event contracts (click, listing).", no_args_is_help=True)


@contracts_app.command("schema")
def schema(kind: str = typer.Argument(..., help="click or listing")) -> None:
    """Print the JSON Schema (draft 2020-12) of an event, generated from the parser's field table."""
    from recs.json_schema import json_schema

    if kind not in ("click", "listing"):
        raise typer.BadParameter(f"expected click or listing, got {kind!r}")
    typer.echo(json.dumps(json_schema(kind, load_settings().contracts), indent=2))  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.add_typer(contracts_app, name="contracts")
