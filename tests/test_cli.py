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
