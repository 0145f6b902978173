from switchboard.cli import app

app()
