"""`recs stack up|down|status`: the embedded local stack (see recs/local/stack.py)."""

from __future__ import annotations

import typer

from conf import load_settings
from recs.local.processes import ServiceStatus
from recs.local.stack import Stack

stack_app = typer.Typer(help="Start, stop and check the local stack (broker, Redis, Flink).",
                        no_args_is_help=True)
SERVICES = typer.Option("broker,redis,flink", help="Comma-separated services to act on.")


def _stack(services: str) -> Stack:
    return Stack(load_settings(), tuple(s.strip() for s in services.split(",") if s.strip()))


def _print(statuses: list[ServiceStatus]) -> bool:
    for st in statuses:
        pid = f"pid {st.pid}" if st.pid else "-"
        typer.echo(f"{st.name:<7} {st.state:<9} {st.address:<24} {pid:<11} {st.detail}")
    return all(st.ok for st in statuses)


@stack_app.command("up")
def up(services: str = SERVICES) -> None:
    """Start what is not running, wait until healthy, create the topics. Safe to run twice."""
    from recs.local.processes import StackError

    try:
        ok = _print(_stack(services).up())
    except StackError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if ok else 1)


@stack_app.command("down")
def down(services: str = SERVICES) -> None:
    """Stop every service started by `up`; fails if any process is left behind."""
    stack = _stack(services)
    left = stack.down()
    if left:
        stack.kill_leftovers()
        left = stack.leftovers()
    if left:
        typer.echo(f"error: processes left behind: {left}", err=True)
        raise typer.Exit(1)
    typer.echo("stack down")


@stack_app.command("status")
def status(services: str = SERVICES) -> None:
    """One line per service: state, address, pid, details. Exit 1 if any is not healthy."""
    raise typer.Exit(0 if _print(_stack(services).status()) else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
