"""`python -m switchboard.bench [options]`: the same command, flags and output as `switchboard bench`.

It runs from any checkout (docs/performance.md, "Measuring an optimisation yourself"); a SIGTERM
stops the run like Ctrl-C, so the services it started are stopped too.
"""

import signal
import sys

import typer

from switchboard.cli import app


def _on_sigterm(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)
    bench = typer.main.get_command(app).commands["bench"]  # the CLI's own definition of every flag
    bench.main(args=sys.argv[1:], prog_name="python -m switchboard.bench")
