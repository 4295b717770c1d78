"""``hpcstack serve``: the U2CB build service on uvicorn.

Every option here is a setting of :class:`hpcstack.service.config.Settings`; the
defaults live there only (an option left out is ``None``: not given), and the
settings file and ``U2CB_*`` variables give the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hpcstack.service.settings_text import MEANING

if TYPE_CHECKING:
    from hpcstack.service.config import Settings


def _help(key: str) -> str:
    return f"{MEANING[key]} (setting {key})"


#: The flag that sets each setting, for messages ("--workers: ...").
FLAGS = {"host": "--host", "port": "--port", "data_dir": "--data-dir",
         "database_url": "--database", "munge_socket": "--munge-socket",
         "admin_users": "--admin", "executor": "--executor",
         "slurm_partition": "--slurm-partition", "max_workers": "--workers",
         "max_builds_per_user": "--per-user", "build_time_limit": "--time-limit",
         "quota_bytes": "--quota", "max_upload_bytes": "--max-upload",
         "max_attempts": "--max-attempts", "docker_cert_dir": "--docker-cert-dir",
         "build_network": "--build-network", "build_loopback_ports": "--build-loopback-port",
         "build_log_bytes": "--build-log-limit", "session_idle_limit": "--session-idle-limit",
         "session_time_limit": "--session-time-limit", "instance": "--instance",
         "metrics_readers": "--metrics-reader", "pid_file": "--pid-file",
         "sign_key": "--sign-key", "sign_key_fingerprint": "--sign-key-fingerprint",
         "log_level": "--log-level"}


def serve(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Settings file (default /etc/hpcstack/u2cb.yaml, or "
        "$U2CB_CONFIG).")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the effective settings and where each came from, "
        "then exit.")] = False,
    stop: Annotated[bool, typer.Option(
        "--stop", help="Stop the service these settings name (its PID file), then exit.")
    ] = False,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port"))] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_help("data_dir"))] = None,
    database: Annotated[str | None, typer.Option(help=_help("database_url"))] = None,
    munge_socket: Annotated[str | None, typer.Option(help=_help("munge_socket"))] = None,
    admin: Annotated[list[str] | None, typer.Option(
        "--admin", help=_help("admin_users") + " (repeatable)")] = None,
    executor: Annotated[str | None, typer.Option(help=_help("executor"))] = None,
    slurm_partition: Annotated[str | None, typer.Option(help=_help("slurm_partition"))
                               ] = None,
    workers: Annotated[int | None, typer.Option(help=_help("max_workers"))] = None,
    per_user: Annotated[int | None, typer.Option(help=_help("max_builds_per_user"))] = None,
    time_limit: Annotated[float | None, typer.Option(help=_help("build_time_limit"))] = None,
    quota: Annotated[int | None, typer.Option(help=_help("quota_bytes"))] = None,
    max_upload: Annotated[int | None, typer.Option(help=_help("max_upload_bytes"))] = None,
    max_attempts: Annotated[int | None, typer.Option(help=_help("max_attempts"))] = None,
    docker_cert_dir: Annotated[str | None, typer.Option(help=_help("docker_cert_dir"))
                               ] = None,
    build_network: Annotated[bool | None, typer.Option(
        "--build-network/--no-build-network", help=_help("build_network"))] = None,
    build_loopback_port: Annotated[list[int] | None, typer.Option(
        "--build-loopback-port", help=_help("build_loopback_ports") + " (repeatable)")
    ] = None,
    build_log_limit: Annotated[int | None, typer.Option(help=_help("build_log_bytes"))
                               ] = None,
    session_idle_limit: Annotated[float | None, typer.Option(
        help=_help("session_idle_limit"))] = None,
    session_time_limit: Annotated[float | None, typer.Option(
        help=_help("session_time_limit"))] = None,
    instance: Annotated[str | None, typer.Option(help=_help("instance"))] = None,
    metrics_reader: Annotated[list[str] | None, typer.Option(
        "--metrics-reader", help=_help("metrics_readers") + " (repeatable)")] = None,
    pid_file: Annotated[Path | None, typer.Option(help=_help("pid_file"))] = None,
    sign_key: Annotated[Path | None, typer.Option(help=_help("sign_key"))] = None,
    sign_key_fingerprint: Annotated[str | None, typer.Option(
        help=_help("sign_key_fingerprint"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
) -> None:
    """Run the U2CB build service (REST API under /api/v1, OpenAPI at /api/v1/docs).

    Settings: defaults < settings file < $U2CB_KEY < flags.
    """
    from hpcstack.service import config as cfg

    flags = {"host": host, "port": port, "data_dir": data_dir, "database_url": database,
             "munge_socket": munge_socket, "admin_users": admin or None,
             "executor": executor, "slurm_partition": slurm_partition,
             "max_workers": workers, "max_builds_per_user": per_user,
             "build_time_limit": time_limit, "quota_bytes": quota,
             "max_upload_bytes": max_upload, "max_attempts": max_attempts,
             "docker_cert_dir": docker_cert_dir, "build_network": build_network,
             "build_loopback_ports": build_loopback_port or None,
             "build_log_bytes": build_log_limit, "session_idle_limit": session_idle_limit,
             "session_time_limit": session_time_limit, "instance": instance,
             "metrics_readers": metrics_reader or None, "pid_file": pid_file,
             "sign_key": sign_key, "sign_key_fingerprint": sign_key_fingerprint,
             "log_level": log_level}
    loaded = cfg.load(config=config, flags=flags, flag_names=FLAGS)
    if print_config:
        print(loaded.render(), end="")
        return
    if stop:
        from hpcstack.service.pidfile import stop_service

        print(stop_service(loaded.settings.pid_path))
        return
    run(loaded.settings)


def run(settings: Settings) -> None:
    """Start the service on these settings; its PID file is there while it runs."""
    import uvicorn

    from hpcstack.errors import UserError
    from hpcstack.service import pidfile
    from hpcstack.service.app import create_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(levelname)s: %(name)s: %(message)s")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app = create_app(settings)
    except Exception as err:  # a bad database URL or unwritable data directory
        raise UserError(f"cannot start the service: {str(err).splitlines()[0]}") from None
    pidfile.claim(settings.pid_path)  # released by the app's shutdown
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                    ws="websockets-sansio")
    finally:
        pidfile.release(settings.pid_path)
