"""The `backend` command: serve the API, migrate the database, manage accounts and keys."""

from backend.cli import purge, server
from backend.cli.api_keys import api_keys_app
from backend.cli.common import app
from backend.cli.users import users_app

app.add_typer(users_app, name="users")
app.add_typer(api_keys_app, name="api-keys")
# Its first name, kept working for the scripts written against it.
app.add_typer(api_keys_app, name="tokens", hidden=True)

__all__ = ["app", "purge", "server"]
