"""``edgepack fleet``: initialise and run the fleet server (fleet_server is imported lazily)."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from .._errors import ConfigError, UsageError
from . import add_command, emit


def register(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="run the fleet server (enrollment, rollouts, TUF, dashboard)",
                           description="Initialise and run the fleet server.",
                           epilog="Example:\n  edgepack fleet init --instance fleet/ --release-trust trust.json\n"
                                  "  edgepack fleet serve --instance fleet/ --port 8080 --workers 2",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")
    fleet.set_defaults(func=lambda a: fleet.print_help() or 0)

    init = add_command(fsub, "init", "create the instance, its database and the first admin token (printed once)",
                       "edgepack fleet init --instance fleet/ --release-trust trust.json")
    init.add_argument("--instance", type=Path, default=None, help="instance directory (default ./instance)")
    init.add_argument("--release-trust", type=Path, help="trust file that uploaded bundles must verify against")
    init.add_argument("--tuf-root-key", type=Path, action="append", default=[],
                      help="offline root key that signs TUF root v1 (repeat; not kept by the server)")
    init.add_argument("--tuf-threshold", type=int, default=1, help="root signatures TUF needs (default 1)")
    init.add_argument("--group", action="append", default=[], help="device group to create (repeat)")
    init.set_defaults(func=_init)

    serve = add_command(fsub, "serve", "run the server under gunicorn",
                        "edgepack fleet serve --instance fleet/ --host 127.0.0.1 --port 8080 --workers 2")
    serve.add_argument("--instance", type=Path, default=None)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=4, help="threads per worker (gthread)")
    serve.add_argument("--accept-wal-loss", action="store_true",
                       help="start even though committed transactions after a damaged WAL frame will be dropped")
    serve.set_defaults(func=_serve)

    bak = add_command(fsub, "backup", "copy the SQLite database consistently while the server runs",
                      "edgepack fleet backup --instance fleet/ --out backups/fleet-2026-01-01.db")
    bak.add_argument("--instance", type=Path, default=None)
    bak.add_argument("--out", type=Path, required=True, help="backup file to write (temp name, then renamed)")
    bak.set_defaults(func=_backup)

    tok = add_command(fsub, "admin-token", "create another admin token (printed once)",
                      "edgepack fleet admin-token --instance fleet/ --name ci")
    tok.add_argument("--instance", type=Path, default=None)
    tok.add_argument("--name", required=True)
    tok.set_defaults(func=_admin_token)

    enr = add_command(fsub, "enroll-token", "create a one-time enrollment token for a device group",
                      "edgepack fleet enroll-token --instance fleet/ --group lab --ttl-hours 24")
    enr.add_argument("--instance", type=Path, default=None)
    enr.add_argument("--group", default="default")
    enr.add_argument("--ttl-hours", type=float, default=24.0)
    enr.set_defaults(func=_enroll_token)

    aud = add_command(fsub, "audit", "show the audit log (newest first), or verify its hash chain",
                      "edgepack fleet audit --instance fleet/ --action rollout --limit 20\n"
                      "  edgepack fleet audit --instance fleet/ --verify")
    aud.add_argument("--instance", type=Path, default=None)
    aud.add_argument("--actor", help="only this actor (exact, or a prefix such as 'admin' or 'admin:ci')")
    aud.add_argument("--action", help="only this action (exact, or a prefix such as 'rollout')")
    aud.add_argument("--limit", type=int, default=50, help="entries to show (default 50)")
    aud.add_argument("--verify", action="store_true",
                     help="check the whole hash chain; exit 5 at the first edited, missing or reordered row")
    aud.set_defaults(func=_audit)


def _write_private(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:  # mkstemp creates the file 0600
        f.write(text)
    os.replace(tmp, path)


def _init(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from fleet_server._bp_admin import create_admin_token, ensure_group
    from fleet_server._config import SECRET_FILE, TRUST_FILE, load_config
    from fleet_server._db import Database
    from fleet_server._models import AdminToken

    config = load_config(args.instance)
    inst = config.instance_dir
    inst.mkdir(parents=True, exist_ok=True)
    db = Database(config.db_url, sqlite_synchronous=config.sqlite_synchronous)
    db.create_schema()
    with db.read() as s:
        if s.scalar(select(AdminToken.id).limit(1)) is not None:
            raise UsageError(f"{inst} is already initialised", where=str(inst),
                             hint="use 'edgepack fleet admin-token --name NAME' for another token")
    if args.release_trust:
        from .._trust import load_trust

        load_trust(args.release_trust)  # refuse a bad trust file now, not at the first upload
        shutil.copyfile(args.release_trust, inst / TRUST_FILE)
    if not (inst / SECRET_FILE).exists() and not config.secret_key:
        _write_private(inst / SECRET_FILE, secrets.token_urlsafe(48) + "\n")
    groups = args.group or ["default"]
    with db.write() as s:
        for g in groups:
            ensure_group(s, g)
    root = None
    if args.tuf_root_key:
        from fleet_server._publish import create_tuf

        root = create_tuf(inst, args.tuf_root_key, args.tuf_threshold, groups)
    token = create_admin_token(db, "admin")
    _cli_audit(db, "cli.init", f"instance:{inst.name}", "created with 'edgepack fleet init'", {"groups": groups})
    db.dispose()
    emit(args, {"instance": str(inst), "admin_token": token, "database": db.safe_url,
                "tuf_root": str(root) if root else None},
         f"initialised {inst} (database {db.safe_url})\n"
         f"admin token (shown once, store it now): {token}\n"
         + (f"TUF root for devices to pin: {root}\n" if root else "TUF: not configured (no --tuf-root-key)\n")
         + ("" if (inst / TRUST_FILE).exists() else
            f"warning: no release trust file; copy one to {inst / TRUST_FILE} before uploading bundles"))
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 1 or not 0 < args.port < 65536:
        raise UsageError("--workers must be >= 1 and --port 1..65535")
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before fleet_server (and so prometheus_client) is imported: it picks its value store at import
        inst = Path(args.instance or os.environ.get("EDGEPACK_FLEET_INSTANCE") or "instance")
        prom = inst / "prometheus"
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    from gunicorn.app.base import BaseApplication

    from fleet_server import create_app
    from fleet_server._config import load_config
    from fleet_server._db import Database

    config = load_config(args.instance)
    config.require_secret_key()
    _check_state(config, args.accept_wal_loss)  # before anything opens the database (see _recovery)
    db = Database(config.db_url, sqlite_synchronous=config.sqlite_synchronous)
    db.check_schema()  # fail here, once, not in every worker
    if _sqlite_path(config.db_url) is not None:
        from fleet_server._recovery import sweep_orphan_bundles

        sweep_orphan_bundles(db, config.artifacts_dir)  # a killed upload's artifact without its row
    db.dispose()

    def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            self.cfg.set("timeout", 120)
            self.cfg.set("child_exit", child_exit)

        def load(self):  # type: ignore[no-untyped-def]
            return create_app(config)

    try:
        _App().run()
    except SystemExit as e:
        if e.code not in (0, None):
            raise ConfigError(f"gunicorn exited with {e.code}", hint="see the log above") from e
    return 0


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None  # PostgreSQL checks its own pages (data checksums) and has its own backups
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def _check_state(config, accept_wal_loss: bool) -> None:  # type: ignore[no-untyped-def]
    from fleet_server._recovery import check_sqlite, sweep_temp

    path = _sqlite_path(config.db_url)
    if path is not None:
        check_sqlite(path, config.sqlite_startup_check, accept_wal_loss=accept_wal_loss)
    sweep_temp(config.instance_dir, config.artifacts_dir)


def _backup(args: argparse.Namespace) -> int:
    from fleet_server._config import load_config
    from fleet_server._recovery import backup_sqlite

    config = load_config(args.instance)
    path = _sqlite_path(config.db_url)
    if path is None:
        raise ConfigError("backup copies the embedded SQLite database; this instance uses another one",
                          where=config.db_url.split("@")[-1], hint="back up PostgreSQL with pg_dump")
    if not path.exists():
        raise ConfigError(f"there is no database at {path}", where=str(config.instance_dir),
                          hint="pass the --instance of an initialised fleet ('edgepack fleet init')")
    size = backup_sqlite(path, args.out)
    emit(args, {"backup": str(args.out), "bytes": size}, f"backed up {path} to {args.out} ({size} bytes)")
    return 0


def _admin_token(args: argparse.Namespace) -> int:
    from fleet_server._bp_admin import create_admin_token
    from fleet_server._config import load_config
    from fleet_server._db import Database

    config = load_config(args.instance)
    db = Database(config.db_url)
    db.check_schema()
    token = create_admin_token(db, args.name)
    _cli_audit(db, "cli.admin_token", f"admin-token:{args.name}", "created with 'edgepack fleet admin-token'")
    emit(args, {"name": args.name, "admin_token": token}, f"admin token {args.name} (shown once): {token}")
    return 0


def _enroll_token(args: argparse.Namespace) -> int:
    from fleet_server._app import Fleet
    from fleet_server._bp_admin import create_enrollment_token
    from fleet_server._config import load_config

    config = load_config(args.instance, secret_key="unused-by-this-command-" + "x" * 16)
    fleet = Fleet(config)
    fleet.db.check_schema()
    out = create_enrollment_token(fleet, args.group, {}, args.ttl_hours * 3600)
    _cli_audit(fleet.db, "cli.enroll_token", f"group:{args.group}", "created with 'edgepack fleet enroll-token'",
               {"expires_at": out["expires_at"]})
    emit(args, out, f"enrollment token for group {args.group} (one use, shown once): {out['token']}")
    return 0


def _cli_audit(db: object, action: str, target: str, reason: str, details: dict[str, object] | None = None) -> None:
    from fleet_server._audit import record

    with db.write() as s:  # type: ignore[attr-defined]
        record(s, "cli", action, target, reason, details)


def _audit(args: argparse.Namespace) -> int:
    import time

    from fleet_server._audit import entry_dict, page, verify
    from fleet_server._config import load_config
    from fleet_server._db import Database

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    config = load_config(args.instance)
    db = Database(config.db_url)
    try:
        db.check_schema()
        if args.verify:
            rep = verify(db)  # raises AuditChainError (exit 5) at the first bad row
            emit(args, {"ok": True, "rows": rep.rows, "head": rep.head},
                 f"audit log OK: {rep.rows} row(s), chain head {rep.head}")
            return 0
        with db.read() as s:
            rows, total = page(s, actor=args.actor, action=args.action, per_page=args.limit)
            entries = [entry_dict(e) for e in rows]
    finally:
        db.dispose()
    lines = [f"{e['seq']:>6}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['at']))}  {e['actor']:<24}  "
             f"{e['action']:<28}  {e['target']}  {e['reason']}" for e in entries]
    emit(args, {"total": total, "entries": entries},
         "\n".join(lines) + f"\n({len(entries)} of {total} entr{'y' if total == 1 else 'ies'})")
    return 0
