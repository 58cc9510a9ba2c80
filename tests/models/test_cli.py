import pytest
import typer
from typer.testing import CliRunner

from models.cli import model_settings
from recs.cli import app


@pytest.mark.parametrize("cmd", ["train", "eval", "export"])
def test_commands_have_help(cmd):
    res = CliRunner().invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and "--help" in res.output


def test_config_file_overrides_model_table(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[model]\ndim = 64\nuser_encoder = "mean"\ncheckpoint_dir = "x/ck"\n')
    s = model_settings(cfg, seed=7)
    assert (s.dim, s.user_encoder, s.seed) == (64, "mean", 7)
    assert s.checkpoint_dir.is_absolute() and s.checkpoint_dir.parts[-2:] == ("x", "ck")
    assert s.max_len == model_settings(None).max_len          # untouched keys keep defaults


def test_config_file_with_unknown_key_is_refused(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text("[model]\ndimm = 64\n")
    with pytest.raises(typer.BadParameter, match="unknown \\[model\\] keys \\['dimm'\\]"):
        model_settings(cfg)
