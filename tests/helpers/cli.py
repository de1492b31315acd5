"""The devnet command run in this process (``devnet.cli.main``), and its one-line errors."""

from __future__ import annotations

from devnet import cli


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``devnet ARGV`` run in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("devnet: using ")]
    assert len(lines) == 1 and lines[0].startswith("devnet: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
