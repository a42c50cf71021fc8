"""The ``oxc`` command line: serve, administer a data directory, migrate, and talk to a server.

``oxc_wsgi.main`` (the ``oxc`` console script) hands over to :func:`main` here,
so that importing the server never imports the client::

    oxc serve                        # waitress on HOST:PORT (the default command)
    oxc admin create-user alice      # the password is read from a prompt or stdin
    oxc migrate                      # the PostgreSQL schema at STORE_URL
    oxc login alice; oxc send hi     # the client commands, through oxc_client

Accounts made and passwords set here go through the same service as the API
(``handlers.services.accounts``), with the same checks and messages. Exit
codes: 0 done, 1 refused, 2 usage or configuration, 3 store (or server)
unreachable, 4 other OS errors.
"""

import argparse
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import time
import types
from collections.abc import Callable
from typing import Any, TextIO

import oxc_wsgi
from handlers.http import HTTPError
from handlers.media import UPLOAD_OVERHEAD
from handlers.services import accounts
from handlers.services.passwords import Passwords
from middleware import accesslog
from oxc_client import Client, ConnectionFailed, OxcError
from oxc_settings import ConfigError, Settings
from store import Conflict as StoreConflict
from store import StoreError, open_store

log = oxc_wsgi.log

# =============================================================================
# Serving
# =============================================================================


def data_path(settings: Settings) -> str:
    """DATA_DIR as a path (always set here: the command line reads it from the environment)."""
    assert settings.data_dir is not None
    return os.fspath(settings.data_dir)


def configure_logging(level: str, log_format: str = "text") -> None:
    """One format (LOG_FORMAT) for oxc's, waitress's and the access log's lines, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(accesslog.formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def waitress_options(settings: Settings) -> dict[str, Any]:
    """waitress settings that keep real-time listeners from starving other requests.

    Each open stream or long-poll holds a worker thread, so there are
    REALTIME_MAX_CLIENTS threads for listeners plus THREADS for everything
    else (the app refuses listeners beyond the first number). Disconnects are
    only noticed with ``channel_request_lookahead``; ``poll`` lifts select's
    limit of 1024 descriptors.
    """
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": settings.threads + settings.realtime_max_clients,
        "connection_limit": max(100, 2 * settings.realtime_max_clients + 100),
        "channel_request_lookahead": 1,
        "asyncore_use_poll": True,
        "channel_timeout": 30,
        "max_request_body_size": max(settings.max_body_bytes, settings.media_max_bytes + UPLOAD_OVERHEAD),
        "clear_untrusted_proxy_headers": True,
        # With TRUSTED_PROXY, waitress puts the forwarded client in REMOTE_ADDR (for the rate limits too).
        **(
            {"trusted_proxy": settings.trusted_proxy, "trusted_proxy_headers": {"x-forwarded-for"}}
            if settings.trusted_proxy
            else {}
        ),
        "ident": "oxc",
    }


def serve(settings: Settings) -> None:
    """Serve with waitress (guarded against slow clients: ``oxc_server``) until SIGTERM or SIGINT."""
    import oxc_server

    app = oxc_wsgi.create_app(settings)
    oxc_wsgi.settle_heap()
    try:
        server = oxc_server.create_server(
            app,
            per_client=settings.max_connections_per_client,
            header_timeout=settings.header_timeout,
            **waitress_options(settings),
        )
    except OSError as exc:
        app.core.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                f"port {settings.port} on {settings.host} is already in use (another server?); "
                "set PORT to choose another"
            ) from None
        raise

    def stop(signum: int, frame: Any) -> None:
        log.info("received %s: finishing requests in flight", signal.Signals(signum).name)
        app.core.ctx.events.close()  # open streams end now instead of holding their threads
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = oxc_wsgi.data_location(settings)
    base = f"http://{host_in_url(server.effective_host)}:{server.effective_port}"
    log.info("oxc %s listening on %s (data in %s)", oxc_wsgi.__version__, base, where)
    # The first line is what scripts wait for (tests/server.py reads the port from it).
    lines = [f"oxc listening on {base} (data in {where})"]
    if settings.web_enabled:
        lines.append(f"  chat page: {base}/")
    lines.append(f"  API docs:  {base}{settings.api_prefix}/docs")
    print("\n".join(lines), flush=True)
    try:
        server.run()
    finally:
        app.core.close()
        log.info("oxc stopped; store closed")


def host_in_url(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


# =============================================================================
# Administration: ``oxc admin ...``, ``oxc migrate``, ``oxc migrate-store``
# =============================================================================


def _admin_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("New password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the passwords differ")
    return first


def _show_progress(done: int, total: int, name: str) -> None:
    print(f"\r{done}/{total} {name[:60]:<60}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def admin(args: argparse.Namespace, settings: Settings) -> int:
    """The ``oxc admin`` commands: they act on DATA_DIR while no server runs on it."""
    from store import backup, read_legacy

    data_dir = data_path(settings)
    action = args.action
    if settings.store_url and action in ("backup", "restore", "compact"):
        print(
            f"oxc: admin {action} acts on a JSON data directory; with STORE_URL use pg_dump (or oxc migrate-store)",
            file=sys.stderr,
        )
        return 1
    try:
        if action == "backup":
            count = backup.backup(data_dir, args.file, progress=_show_progress)
            print(f"backed up {count} files of {data_dir} to {args.file}")
            return 0
        if action == "restore":
            count = backup.restore(args.file, data_dir, replace=args.force, progress=_show_progress)
            print(f"restored {count} files into {data_dir}")
            return 0
    except (FileExistsError, ValueError) as exc:
        print(f"oxc: {exc}", file=sys.stderr)
        return 1
    if action in ("verify", "repair"):
        return check_data(action, data_dir, blobs_only=bool(settings.store_url))
    store = open_store(data_dir, compact_min=settings.compact_min, url=settings.store_url or None, pool_size=2)
    try:
        if action == "compact":
            store.compact()
            print(f"compacted {data_dir}")
        elif action == "import-0xc":
            users, messages, sessions = read_legacy(args.source)
            if store.find_user(users[0]["username"]) if users else False:
                print("oxc: the data directory already holds these users", file=sys.stderr)
                return 1
            store.import_legacy((users, messages, sessions))
            print(f"imported {len(users)} users, {len(messages)} messages, {len(sessions)} sessions")
        else:
            # What the account service needs; no mail is sent from here.
            ctx = types.SimpleNamespace(
                settings=settings, store=store, passwords=Passwords(settings.bcrypt_rounds), clock=time.time, codes=None
            )
            if action == "create-user":
                given = {"username": args.username, "password": _admin_password(args), "email": args.email}
                created = accounts.create_account(ctx, **accounts.read_fields(accounts.NEW_ACCOUNT, given, settings))
                print(f"created {created['username']}")
            else:
                password = accounts.check_new_password({"password": _admin_password(args)})
                user = store.find_user(args.username)
                if user is None:
                    print(f"oxc: no user {args.username}", file=sys.stderr)
                    return 1
                ended = accounts.set_password(ctx, user, password)
                print(f"password of {user['username']} reset; {ended} sessions ended")
        return 0
    except (HTTPError, StoreConflict, ValueError) as exc:
        print(f"oxc: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()


def check_data(action: str, data_dir: str, blobs_only: bool) -> int:
    """``oxc admin verify`` (exit 1 when anything is damaged) and ``oxc admin repair``."""
    from store import integrity

    if not os.path.isdir(data_dir):
        print(f"oxc: {data_dir} is not a directory", file=sys.stderr)
        return 1
    if action == "verify":
        damage = integrity.verify(data_dir, blobs_only=blobs_only)
        for row in damage:
            print(f"damaged: {row}")
        what = "attachment blobs" if blobs_only else "journal, snapshot and attachment blobs"
        print(
            f"{len(damage)} damaged in {data_dir} ({what} checked)"
            if damage
            else f"no damage in {data_dir} ({what} checked)"
        )
        return 1 if damage else 0
    if blobs_only:
        print("oxc: with STORE_URL, repair acts on no database; verify lists damaged blobs", file=sys.stderr)
        return 1
    lost = integrity.repair(data_dir)
    print(
        f"repaired {data_dir}: {len(lost)} records or files could not be kept"
        if lost
        else f"no damage in {data_dir}; nothing changed"
    )
    return 0


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    """``oxc migrate [--show]`` and ``oxc migrate-store --from SRC --to DST``."""
    try:
        from store import postgres, transfer
    except ImportError as exc:
        print(f"oxc: PostgreSQL needs psycopg 3: pip install 'oxc[postgres]' ({exc})", file=sys.stderr)
        return 1
    if args.command == "migrate-store":
        blobs = args.blobs or os.path.join(data_path(settings), "blobs")
        counts = transfer.copy_store(args.source, args.destination, blob_dir=blobs, progress=_show_progress)
        print(
            f"copied {sum(counts.values())} records ({', '.join(f'{n} {t}' for t, n in counts.items() if n)}) "
            f"to {'the database' if transfer.is_url(args.destination) else args.destination}"
        )
        return 0
    if not postgres.is_url(settings.store_url):
        print("oxc: migrate needs STORE_URL=postgresql://...", file=sys.stderr)
        return 1
    if not args.show:
        for version, name in postgres.migrate(settings.store_url):
            print(f"applied {version:04d}_{name}")
    version, newest = postgres.current_version(settings.store_url)
    print(f"schema version {version} (this oxc's newest: {newest})")
    return 0


# =============================================================================
# Client commands: ``oxc register|login|logout|whoami|send|chats|history|tail|members|search|upload|download``
# =============================================================================

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Credentials:
    """Tokens per server URL in a file only the user can read (0600)."""

    def __init__(self, path: str | None = None) -> None:
        directory = os.environ.get("OXC_CONFIG_DIR") or os.path.join(
            os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "oxc"
        )
        self.path = path or os.path.join(directory, "credentials.json")

    def load(self, url: str) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f).get(url, {})
        except (OSError, ValueError):
            return {}

    def save(self, url: str, entry: dict[str, Any]) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                everything = json.load(f)
        except (OSError, ValueError):
            everything = {}
        if entry:
            everything[url] = entry
        else:
            everything.pop(url, None)
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        temp = self.path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(everything, f)
        os.replace(temp, self.path)


def add_client_commands(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to an argparse subparsers object."""

    def command(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=parents, **kw)

    sub = command("register", "create an account")
    sub.add_argument("username")
    sub.add_argument("--email")
    sub = command("login", "log in (the token is kept in a 0600 file, never printed)")
    sub.add_argument("username")
    command("logout", "end the session")
    command("whoami", "who is logged in")
    sub = command("send", "send a message: public, to a user (--to) or to a chat (--chat)")
    sub.add_argument("text")
    target = sub.add_mutually_exclusive_group()
    target.add_argument("--to", help="a username: the direct chat with them")
    target.add_argument("--chat", help="a chat id")
    sub.add_argument("--reply-to")
    sub = command("chats", "my chats")
    sub.add_argument("--limit", type=int, default=50)
    sub = command("history", "a chat's messages, oldest first (--chat), or the public ones")
    sub.add_argument("--chat")
    sub.add_argument("--limit", type=int, default=20)
    sub.add_argument("--before")
    sub = command("tail", "the latest messages; -f follows live events until Ctrl-C")
    sub.add_argument("-f", "--follow", action="store_true")
    sub.add_argument("--chat")
    sub.add_argument("--limit", type=int, default=10)
    sub = command("members", "a chat's members")
    sub.add_argument("chat")
    sub = command("search", "find messages by their words")
    sub.add_argument("text")
    sub.add_argument("--chat")
    sub.add_argument("--limit", type=int, default=20)
    sub = command("upload", "upload a file into a chat")
    sub.add_argument("chat")
    sub.add_argument("file")
    sub.add_argument("--message", help="send it as a message with this text")
    sub = command("download", "download an attachment")
    sub.add_argument("attachment")
    sub.add_argument("-o", "--output")


CLIENT_COMMANDS = (
    "register",
    "login",
    "logout",
    "whoami",
    "send",
    "chats",
    "history",
    "tail",
    "members",
    "search",
    "upload",
    "download",
)


def client_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every client command takes (also read from OXC_URL, OXC_API_KEY)."""
    parser.add_argument(
        "--url",
        default=os.environ.get("OXC_URL", "http://127.0.0.1:5000"),
        help="the server (default: $OXC_URL or http://127.0.0.1:5000)",
    )
    parser.add_argument("--api-prefix", default=os.environ.get("OXC_API_PREFIX", "/api"))
    parser.add_argument("--api-key", default=os.environ.get("OXC_API_KEY"))
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    return parser


def _password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    import getpass

    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass(prompt)


def _progress(label: str) -> Callable[[int, int], None]:
    shown = [-1]

    def report(done: int, total: int) -> None:
        if total <= 1024 * 1024:
            return
        percent = done * 100 // total
        if percent != shown[0]:
            shown[0] = percent
            bar = "#" * (percent // 4)
            sys.stderr.write(f"\r{label} [{bar:<25}] {percent:3d}% {done // 1024} kB")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report


def _line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    kind = event["type"]
    when = event.get("at", "")[11:19]
    if kind in ("chat.message.created", "message.created"):
        where = (
            f"#{data['chat_id'][:8]}" if data.get("chat_id") else ("private" if data.get("recipient_id") else "public")
        )
        return f"{when} {where} {data.get('username')}: {data.get('content') or '[encrypted or attachment]'}"
    if kind.startswith("typing.") or kind.startswith("presence."):
        return f"{when} {kind} {data.get('username') or data.get('user_id')}"
    return f"{when} {kind} {json.dumps(data)[:120]}"


def run_client_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one client subcommand; returns the exit code."""
    out = out or sys.stdout
    store = Credentials()
    url = args.url.rstrip("/")

    def save(tokens: dict[str, Any] | None) -> None:
        entry = dict(store.load(url), **tokens) if tokens else {}
        store.save(url, entry)

    client = Client(url, api_prefix=args.api_prefix, api_key=args.api_key, tokens=store.load(url), on_tokens=save)

    def show(data: Any, text: str) -> None:
        out.write((json.dumps(data, indent=2) if args.json else text) + "\n")

    try:
        name = args.command
        if name == "register":
            show(client.register(args.username, _password(args), args.email), f"registered {args.username}")
        elif name == "login":
            user = client.login(args.username, _password(args))
            store.save(url, dict(client.tokens, username=user["username"]))
            show(user, f"logged in as {user['username']}")
        elif name == "logout":
            client.logout()
            show({"status": "logged out"}, "logged out")
        elif name == "whoami":
            me = client.me()
            show(me, f"{me['username']} ({me['id']})")
        elif name == "send":
            if args.chat:
                message = client.send(args.chat, args.text, reply_to_id=args.reply_to)
            elif args.to:
                message = client.direct_chat(args.to, args.text)["message"]
            else:
                message = client.send_message(args.text)
            show(message, f"sent {message['id']}")
        elif name == "chats":
            chats = client.chats(limit=args.limit)["chats"]
            show(
                chats,
                "\n".join(
                    f"{c['id']}  {(c.get('name') or (c.get('peer') or {}).get('username') or ''):<20} "
                    f"{c['type']:<6} unread {c['unread_count']}"
                    for c in chats
                )
                or "no chats",
            )
        elif name in ("history", "tail"):
            page = (
                client.history(args.chat, limit=args.limit, before=getattr(args, "before", None))
                if args.chat
                else client.messages(limit=args.limit, before=getattr(args, "before", None))
            )
            messages = page["messages"]
            show(
                messages,
                "\n".join(
                    f"{m.get('created_at') or m.get('timestamp')} {m['username']}: {m.get('content') or '[no text]'}"
                    for m in messages
                )
                or "no messages",
            )
            if name == "tail" and args.follow:
                out.flush()
                try:
                    for event in client.stream():
                        if args.chat and event.get("data", {}).get("chat_id") != args.chat:
                            continue
                        out.write((json.dumps(event) if args.json else _line(event)) + "\n")
                        out.flush()
                except KeyboardInterrupt:
                    return EXIT_OK
        elif name == "members":
            members = client.members(args.chat)
            show(members, "\n".join(f"{m['username']:<20} {m['role']}" for m in members))
        elif name == "search":
            found = client.search(args.text, chat_id=args.chat, limit=args.limit)["messages"]
            show(
                found,
                "\n".join(f"{m.get('created_at') or m.get('timestamp')} {m['username']}: {m['content']}" for m in found)
                or "nothing found",
            )
        elif name == "upload":
            attachment = client.upload(
                args.chat, args.file, content=args.message, progress=_progress(os.path.basename(args.file))
            )
            show(attachment, f"uploaded {attachment.get('id') or attachment}")
        elif name == "download":
            meta = client.attachment(args.attachment)
            target = args.output or os.path.basename(meta.get("name") or args.attachment)
            size = client.download(args.attachment, target, progress=_progress(target))
            show({"file": target, "size": size}, f"saved {target} ({size} bytes)")
        return EXIT_OK
    except ConnectionFailed as exc:
        sys.stderr.write(f"oxc: {exc}\n")
        return EXIT_UNREACHABLE
    except OxcError as exc:
        sys.stderr.write(f"oxc: {exc.message} (HTTP {exc.status})\n")
        return EXIT_REFUSED


# =============================================================================
# The parser and main
# =============================================================================


def build_parser() -> argparse.ArgumentParser:
    """The command line: serve, admin actions, migrations and the client commands."""
    parser = argparse.ArgumentParser(prog="oxc", description="oxc chat service and client")
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve the API with waitress (the default)")
    serve_parser.add_argument("--host")
    serve_parser.add_argument("--port", type=int)
    serve_parser.add_argument("--data-dir")
    serve_parser.add_argument("--threads", type=int)
    admin_parser = commands.add_parser("admin", help="act on a data directory while its server is stopped")
    admin_parser.add_argument("--data-dir")
    actions = admin_parser.add_subparsers(dest="action", required=True)
    for name, help in (("create-user", "create an account"), ("reset-password", "set a user's password")):
        sub = actions.add_parser(name, help=help)
        sub.add_argument("username")
        sub.add_argument("--password-stdin", action="store_true")
        if name == "create-user":
            sub.add_argument("--email")
    actions.add_parser("compact", help="write a fresh snapshot and drop the journal")
    actions.add_parser(
        "verify",
        help="check every journal record, the snapshot and every attachment's "
        "bytes; exit 1 if anything is damaged (safe while the server runs)",
    )
    actions.add_parser(
        "repair",
        help="make a damaged store open again, keeping a copy of every damaged "
        "file and naming every record it could not keep (the server must be stopped)",
    )
    sub = actions.add_parser("backup", help="write the whole store to a .tar.gz file")
    sub.add_argument("file")
    sub = actions.add_parser("restore", help="replace the store with a backup")
    sub.add_argument("file")
    sub.add_argument("--force", action="store_true", help="replace an existing store")
    sub = actions.add_parser("import-0xc", help="import an existing 0xC data directory")
    sub.add_argument("source")
    migrate_parser = commands.add_parser("migrate", help="create or upgrade the PostgreSQL schema at STORE_URL")
    migrate_parser.add_argument("--show", action="store_true", help="only show the schema version")
    move_parser = commands.add_parser(
        "migrate-store", help="copy a whole store between a data directory and PostgreSQL (either way)"
    )
    move_parser.add_argument(
        "--from", dest="source", required=True, metavar="SRC", help="a data directory or a postgresql:// URL"
    )
    move_parser.add_argument(
        "--to",
        dest="destination",
        required=True,
        metavar="DST",
        help="an empty data directory or an empty postgresql:// database",
    )
    move_parser.add_argument(
        "--blobs", help="where the PostgreSQL side keeps attachment bytes (default: DATA_DIR/blobs)"
    )
    add_client_commands(commands, [client_options(argparse.ArgumentParser(add_help=False))])
    return parser


def main(argv: list[str] | None = None) -> int:
    """``oxc [serve|admin ...|register|login|send|tail -f|...]``; with no command, serve."""
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    try:
        settings = Settings.from_environ()
        overrides = {name: getattr(args, name, None) for name in ("host", "port", "data_dir", "threads")}
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        settings.check()
    except ConfigError as exc:
        print(f"oxc: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "admin":
            return admin(args, settings)
        if args.command in ("migrate", "migrate-store"):
            return migrate(args, settings)
        serve(settings)
    except StoreError as exc:
        print(f"oxc: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"oxc: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
