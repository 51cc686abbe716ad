"""``goatclaw serve`` (the HTTP API) and ``goatclaw users`` / ``goatclaw tokens`` (who may use it).

Registered on the app by importing this module (``goatclaw.cli.app`` does). The server is
:mod:`goatclaw.server.app` (the ``serve`` extra: starlette, uvicorn, argon2-cffi, pyotp),
imported only when the command runs. Users and tokens live in the home store: the store
of the first ``--project`` of ``serve``; here, the current project's (or ``--store``).
Exit codes: 0 done, 2 an invalid command line or project, 1 the ``serve`` extra is missing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from goatclaw.cli.app import JsonOption, _err, _out, app, handles_errors

__all__ = ["serve", "tokens_app", "users_app"]

users_app = typer.Typer(help="Users of `goatclaw serve`: a password and a TOTP code for the browser.",
                        no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens of `goatclaw serve`, with scopes (read, run, approve, admin).",
                         no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")

HomeStore = Annotated[Path | None, typer.Option(
    "--store", help="The home store (default: the store of the project in the current folder).")]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _scopes(values: list[str] | None) -> list[str] | None:
    """``--scope``: known scopes only (checked before the store is opened)."""
    from goatclaw.server.accounts import SCOPES

    for value in values or []:
        for scope in filter(None, (s.strip() for s in value.split(","))):
            if scope not in SCOPES:
                raise typer.BadParameter(f"unknown scope '{scope}' (scopes: {', '.join(SCOPES)})")
    return values


def _names(values: list[str] | None) -> list[str] | None:
    """Project names of ``--project`` on a token or user: what a server names its projects."""
    for value in values or []:
        if not _NAME.fullmatch(value):
            raise typer.BadParameter(f"'{value}' cannot name a project (letters, digits, '.', '_', '-', '@')")
    return values


def _user(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise typer.BadParameter(f"'{value}' cannot name a user (letters, digits, '.', '_', '-', '@'; up to 64)")
    return value


def _host(value: str) -> str:
    """``--host``: an IP address or a host name."""
    import ipaddress

    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]")
    except ValueError:
        if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*", value):
            return value
    raise typer.BadParameter(f"'{value}' is not an IP address or a host name")


def _log_level(value: str) -> str:
    if value.lower() not in _LOG_LEVELS:
        raise typer.BadParameter(f"'{value}' is not one of {', '.join(_LOG_LEVELS)}")
    return value.lower()


Scopes = Annotated[list[str], typer.Option("--scope", "-s", callback=_scopes,
                                           help="read, run, approve or admin (comma-separated or repeated); "
                                                "any scope includes read.")]
Projects = Annotated[list[str] | None, typer.Option(
    "--project", "-p", callback=_names,
    help="Only this project (its name on the server); repeatable. None: every project.")]


def _project_arg(values: list[str] | None) -> list[str] | None:
    """``--project``: ``DIR`` or ``NAME=DIR``, each an existing folder (checked before anything starts)."""
    for text in values or []:
        name, sep, folder = text.partition("=")
        path = Path(folder if sep else text)
        if sep and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise typer.BadParameter(f"'{name}' cannot name a project (letters, digits, '.', '_', '-')")
        if not path.is_dir():
            raise typer.BadParameter(f"'{path}' is not a folder")
    return values


def _grace(value: str | None) -> str | None:
    from goatclaw.cli import options

    return options.duration(value) if value is not None else None


@app.command("serve")
@handles_errors
def serve(
    host: Annotated[str, typer.Option("--host", envvar="GOATCLAW_SERVE_HOST", callback=_host,
                                      help="The address to listen on (0.0.0.0: every interface, as the Docker "
                                           "image does).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, envvar="GOATCLAW_SERVE_PORT",
                                      help="The port.")] = 8750,
    project: Annotated[list[str] | None, typer.Option(
        "--project", metavar="DIR|NAME=DIR", callback=_project_arg,
        help="A project folder to serve (default: the current folder); repeatable. The first is the home "
             "project: its store holds users and tokens, its goatclaw.yaml the server: settings.")] = None,
    grace: Annotated[str | None, typer.Option(
        "--grace", callback=_grace, help="On SIGTERM, how long runs in flight may finish before they are "
                                         "cancelled (default: server.grace, else 30s).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", callback=_log_level,
                                           help="uvicorn's log level: " + ", ".join(_LOG_LEVELS) + ".")] = "info",
) -> None:
    """Serve the HTTP API, the dashboard (/ui), schedules and webhooks; tokens and users say who may."""
    from goatclaw.cli import options
    from goatclaw.server.services import serving_app
    from goatclaw.server.serving import serve as run_server

    folders: dict[str, str] | list[str] = _folders(project or [str(Path.cwd())])
    app_ = serving_app(folders)
    server = app_.state.goatclaw
    if grace is not None:
        server.settings = server.settings.but(grace=options.seconds(grace))
    names = ", ".join(f"{p.name} ({p.root})" for p in server.projects.values())
    _err().print(f"goatclaw serve: {names} at http://{host}:{port} (home store {server.home.store})",
                 soft_wrap=True, markup=False, highlight=False)
    if not _has_credentials(server.home.store):
        _err().print("warning: no user or token yet: every API call will be refused. Make one with "
                     "`goatclaw tokens create NAME --scope run`.", soft_wrap=True, markup=False)
    run_server(app_, host=host, port=port, log_level=log_level)


def _folders(values: list[str]) -> dict[str, str] | list[str]:
    """``--project`` values as ``{name: folder}`` when any is named, else the folders themselves."""
    if not any("=" in v for v in values):
        return values
    out: dict[str, str] = {}
    for text in values:
        name, sep, folder = text.partition("=")
        key = name if sep else Path(text).resolve().name
        out[key] = folder if sep else text
    return out


def _has_credentials(store: Path) -> bool:
    from goatclaw.server import accounts

    if not store.exists():
        return False
    return bool(accounts.list_tokens(store) or accounts.list_users(store))


def _home(store: Path | None) -> Path:
    """The home store: ``--store``, else the current project's."""
    from goatclaw.api import load_project_for

    return store or Path(load_project_for(Path.cwd() / "goatclaw.yaml").store_path)


def _when(ts: float | None) -> str:
    import time

    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


# -- users ----------------------------------------------------------------------------------------------


@users_app.command("add")
@handles_errors
def users_add(
    name: Annotated[str, typer.Argument(help="The user name (what they log in with).", callback=_user)],
    scope: Scopes,
    project: Projects = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin's first "
                                                                           "line (scripts), not a prompt.")] = False,
    store: HomeStore = None,
) -> None:
    """Add a user: a password (stored as its argon2 hash) and a TOTP secret, shown once for their app."""
    from goatclaw.server import accounts

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    home = _home(store)
    secret = accounts.add_user(home, name, password, scope, projects=project)
    print(f"user {name} added to {home}")
    print(f"TOTP secret (shown once; add it to an authenticator app): {secret}")
    print(f"or scan: {accounts.totp_uri(name, secret)}")


@users_app.command("list")
@handles_errors
def users_list(store: HomeStore = None, as_json: JsonOption = False) -> None:
    """The users: name, scopes, projects, when added, whether disabled."""
    from goatclaw.server import accounts

    rows = accounts.list_users(_home(store)) if _home(store).exists() else []
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        _out().print("no users")
        return
    for r in rows:
        state = f"disabled {_when(r['disabled_at'])}" if r["disabled_at"] else "active"
        print(f"{r['name']}\t{','.join(r['scopes'])}\t{_projects_text(r['projects'])}\t"
              f"added {_when(r['created_at'])}\t{state}")


@users_app.command("disable")
@handles_errors
def users_disable(
    name: Annotated[str, typer.Argument(help="The user.")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable them again instead.")] = False,
    store: HomeStore = None,
) -> None:
    """Disable a user: no more logins, and every session of theirs ends now (``--enable`` undoes it)."""
    from goatclaw.server import accounts

    ended = accounts.disable_user(_home(store), name, enable=enable)
    print(f"user {name} enabled" if enable else f"user {name} disabled; {ended} session(s) ended")


def _projects_text(projects: Any) -> str:
    return "all projects" if projects is None else ",".join(projects)


# -- tokens ---------------------------------------------------------------------------------------------


@tokens_app.command("create")
@handles_errors
def tokens_create(
    name: Annotated[str, typer.Argument(help="What the token is for (ci, grafana, …).")],
    scope: Scopes,
    project: Projects = None,
    expires: Annotated[str | None, typer.Option("--expires", callback=_grace,
                                                help="Expire after this long (30d, 12h); default: never.")] = None,
    store: HomeStore = None,
) -> None:
    """Make an API token; it is printed once (only its hash is stored)."""
    from goatclaw.cli import options
    from goatclaw.server import accounts

    text, row = accounts.create_token(_home(store), name, scope, projects=project,
                                      expires_in=options.seconds(expires) if expires else None,
                                      created_by="cli")
    _err().print(f"token {row['id']} ({name}: {','.join(row['scopes'])}; {_projects_text(row['projects'])}). "
                 "It is shown once, below: keep it somewhere safe.", soft_wrap=True, markup=False, highlight=False)
    print(text)


@tokens_app.command("revoke")
@handles_errors
def tokens_revoke(
    ref: Annotated[str, typer.Argument(help="The token's id or name (or the token itself).")],
    store: HomeStore = None,
) -> None:
    """Revoke a token: every request with it is refused from now on."""
    from goatclaw.errors import GoatclawError
    from goatclaw.server import accounts

    count = accounts.revoke_token(_home(store), ref)
    if not count:
        raise GoatclawError(f"no live token '{ref}'")
    print(f"{count} token(s) revoked")


@tokens_app.command("list")
@handles_errors
def tokens_list(store: HomeStore = None, as_json: JsonOption = False) -> None:
    """The tokens: id, name, scopes, projects, made when, expiry, revoked (never the token or its hash)."""
    from goatclaw.server import accounts

    rows = accounts.list_tokens(_home(store)) if _home(store).exists() else []
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        _out().print("no tokens")
        return
    for r in rows:
        state = f"revoked {_when(r['revoked_at'])}" if r["revoked_at"] else (
            f"expires {_when(r['expires_at'])}" if r["expires_at"] else "live")
        print(f"{r['id']}\t{r['name']}\t{','.join(r['scopes'])}\t{_projects_text(r['projects'])}\t"
              f"made {_when(r['created_at'])}\t{state}")
