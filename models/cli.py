"""`recs train | eval | export`: the model's commands (registered by recs/cli.py).

    recs data movielens --out data/movielens
    recs train --data data/movielens [--config my.toml] [--seed 1]   # -> artifacts/checkpoints/model.pt
    recs eval --data data/movielens [--out eval.json]                # test-split table vs baselines
    recs export [--eval eval.json]                                   # -> artifacts/model/

`--config` names a TOML file whose [model] table overrides conf/defaults.toml key by key (the same
keys as ModelSettings); the resolved settings are stored in the checkpoint.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import typer

from conf import load_settings
from conf.settings import PROJECT_ROOT, ModelSettings

log = logging.getLogger(__name__)


def model_settings(config: Path | None, **overrides: object) -> ModelSettings:
    """conf [model] <- --config file's [model] table <- explicit overrides (None = not given)."""
    base = load_settings().model.model_dump()
    if config is not None:
        table = tomllib.loads(config.read_text()).get("model")
        if table is None:
            raise typer.BadParameter(f"{config} has no [model] table", param_hint="--config")
        unknown = set(table) - set(base)
        if unknown:
            raise typer.BadParameter(f"unknown [model] keys {sorted(unknown)}", param_hint="--config")
        base |= table
    base |= {k: v for k, v in overrides.items() if v is not None}
    for key in ("artifact_dir", "checkpoint_dir"):
        p = Path(base[key])
        base[key] = p if p.is_absolute() else PROJECT_ROOT / p
    return ModelSettings(**base)


def _default_data() -> Path:
    return load_settings().data.data_dir / "movielens"


def train_cmd(
    data: Path = typer.Option(None, help="Folder with clicks.parquet + listings.parquet "
                                         "(default: <data_dir>/movielens)."),
    config: Path = typer.Option(None, exists=True, dir_okay=False,
                                help="TOML file with a \\[model] table overriding the defaults."),
    seed: int = typer.Option(None, help="Override the model seed setting."),
    out: Path = typer.Option(None, help="Checkpoint file (default: <checkpoint_dir>/model.pt)."),
) -> None:
    """Train the two-tower model (next-click, in-batch softmax + logQ, early stopping on
    validation Recall@10) and write a checkpoint that carries its config."""
    from models.data import leave_last_out, load_dataset
    from models.train import train

    cfg = model_settings(config, seed=seed)
    ds = load_dataset(data or _default_data())
    path = out or cfg.checkpoint_dir / "model.pt"
    t = train(ds, leave_last_out(ds), cfg, checkpoint=path)
    typer.echo(f"best epoch {t.best_epoch}: validation recall@10 {t.best_val:.4f}, "
               f"{t.seconds:.0f} s; checkpoint {path}")

def eval_cmd(
    data: Path = typer.Option(None, help="Same data folder the model was trained on."),
    checkpoint: Path = typer.Option(None, help="(default: <checkpoint_dir>/model.pt)."),
    out: Path = typer.Option(None, help="Write the metrics as JSON here."),
) -> None:
    """Full-catalogue leave-last-out evaluation of a checkpoint against popularity, item-kNN
    and MF baselines (validation and test splits). For the 3-seed report with the new-item
    and synthetic checks, run bench/model_quality.py."""
    from models.data import leave_last_out, load_dataset
    from models.quality import compare, dump, format_table
    from models.train import load_checkpoint

    cfg = load_settings().model
    t = load_checkpoint(checkpoint or cfg.checkpoint_dir / "model.pt")
    ds = load_dataset(data or _default_data())
    if t.data.get("fingerprint") not in (None, ds.summary()["fingerprint"]):
        log.warning("checkpoint was trained on other data (%s)", t.data)
    res = compare(ds, leave_last_out(ds), t, seed=t.settings.seed)
    typer.echo(format_table({k: v["test"] for k, v in res.items()}, "test split"))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dump({"dataset": ds.summary(), "models": res}))
        typer.echo(f"written {out}")

def export_cmd(
    checkpoint: Path = typer.Option(None, help="(default: <checkpoint_dir>/model.pt)."),
    out: Path = typer.Option(None, help="Artifact folder (default: the artifact_dir setting)."),
    eval_json: Path = typer.Option(None, "--eval", exists=True, dir_okay=False,
                                   help="JSON from `recs eval --out` or bench/model_quality.py "
                                        "to record in metadata.json."),
    upgrade: Path = typer.Option(None, "--upgrade", exists=True, file_okay=False,
                                 help="Instead: give this older artifact's user tower the dynamic clicks "
                                      "axis (same weights and model_version, parity checked)."),
) -> None:
    """Export both towers to ONNX with the tokenizer and metadata.json, then load the result
    back through the checking loader."""
    import json

    from models.artifact import load_artifact
    from models.export import export, upgrade_user_tower
    from models.train import load_checkpoint

    settings = load_settings()
    if upgrade is not None:
        done = upgrade_user_tower(upgrade)
        typer.echo(f"{upgrade}: " + ("user tower upgraded to the dynamic clicks axis" if done
                                      else "already has the dynamic clicks axis"))
        return
    cfg = settings.model
    t = load_checkpoint(checkpoint or cfg.checkpoint_dir / "model.pt")
    evaluation = json.loads(eval_json.read_text()) if eval_json else None
    if evaluation is None:
        evaluation = {"validation_recall@10": t.best_val, "note": "validation only; pass --eval"}
    meta = export(t, out or cfg.artifact_dir, evaluation)
    art = load_artifact(out or cfg.artifact_dir, expect_version=meta["model_version"],
                        threads=settings.threads.batch)
    typer.echo(f"exported {art.model_version} (d={art.dim}, N={art.max_len}) to {art.path}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("export")(export_cmd)
