import subprocess
import sys

import pytest

from cedm.cli import COMMANDS, main


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cedm " + cmd in capsys.readouterr().out


def test_wrong_arguments_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "cedm", "import"], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cedm", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_user_error_exit_2(home, capsys):
    assert main(["workspaces", "show", "nope", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "no workspace named 'nope'" in err and len(err.strip().splitlines()) == 1


def test_train_flags_come_from_trainconfig():
    """Every TrainConfig field is a flag whose default lives only in the dataclass; given flags override it."""
    import dataclasses

    from cedm.cli import build_parser
    from cedm.commands.train import _p_uncond
    from cedm.commands import config_from_args
    from cedm.model.train import TrainConfig

    p = build_parser()
    args = p.parse_args(["train", "demo"])
    assert config_from_args(TrainConfig, args) == TrainConfig()
    args = p.parse_args(["train", "demo", "--kimg", "2.5", "--no-xflip", "--lr-rampup", "3", "--ema", "7",
                         "--preset", "tiny", "--precision", "fp32", "--init", "m", "--n-sample", "4"])
    got = config_from_args(TrainConfig, args)
    assert got == dataclasses.replace(TrainConfig(), kimg=2.5, xflip=False, lr_rampup_kimg=3.0,
                                      ema_halflife_kimg=7.0, preset="tiny", precision="fp32", init="m", n_sample=4)
    assert type(got.n_sample) is int and type(got.kimg) is float
    # self:K trains with seed 002's label dropout unless --p-uncond is given
    self_k = p.parse_args(["train", "demo", "--condition", "self:10"])
    assert config_from_args(TrainConfig, self_k, **_p_uncond(self_k)).p_uncond == 0.15
    given = p.parse_args(["train", "demo", "--condition", "self:10", "--p-uncond", "0.3"])
    assert config_from_args(TrainConfig, given, **_p_uncond(given)).p_uncond == 0.3
    for bad in (["--preset", "huge"], ["--precision", "fp8"], ["--batch", "two"]):
        with pytest.raises(SystemExit):
            p.parse_args(["train", "demo", *bad])
