"""Fixtures shared by the whole suite."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    """What one ``moebif`` invocation gave: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)

    def __iter__(self):  # code, out, err = cli(...)
        return iter((self.code, self.out, self.err))


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``moebif args...`` in-process and returns a :class:`CliResult`."""
    from moebif.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()  # drop what earlier calls printed
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return CliResult(int(code or 0), out.out, out.err)

    return run
