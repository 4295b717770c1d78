"""``hpcstack serve``: the U2CB build service on uvicorn, with embedded defaults."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8473,
    data_dir: Annotated[Path | None, typer.Option(
        help="Where records and images live (default ~/.local/share/u2cb).")] = None,
    database: Annotated[str | None, typer.Option(
        envvar="U2CB_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://u2cb@/u2cb (default: SQLite "
        "in the data directory).")] = None,
    munge_socket: Annotated[str | None, typer.Option(help="munged's socket.")] = None,
    admin: Annotated[list[str] | None, typer.Option(
        "--admin", help="A user name with admin rights (repeatable; root always).")] = None,
    executor: Annotated[str, typer.Option(help="local | slurm")] = "local",
    slurm_partition: Annotated[str | None, typer.Option(help="Build partition.")] = None,
    workers: Annotated[int, typer.Option(help="Builds at once, all users.")] = 2,
    per_user: Annotated[int, typer.Option(help="Builds at once per user.")] = 1,
    time_limit: Annotated[float, typer.Option(help="Seconds a build may run.")] = 3600,
    quota: Annotated[int, typer.Option(help="Bytes each user may store.")] = 20 * 2**30,
    max_upload: Annotated[int, typer.Option(help="Bytes one upload may have.")] = 256 * 2**20,
    max_attempts: Annotated[int, typer.Option(
        help="Runs of a build interrupted by a restart before it is failed.")] = 2,
    docker_cert_dir: Annotated[str | None, typer.Option(
        help="CA certificate directory for the site's registry.")] = None,
    build_network: Annotated[bool, typer.Option(
        "--build-network/--no-build-network",
        help="Give builds and connect sessions user-mode network (pasta; the host's "
        "loopback unreachable), or none at all.")] = True,
    build_loopback_port: Annotated[list[int] | None, typer.Option(
        "--build-loopback-port",
        help="A TCP port on this host's loopback that builds may reach, e.g. a registry "
        "mirror (repeatable; none by default).")] = None,
    build_log_limit: Annotated[int, typer.Option(
        help="Bytes of a build's log kept; the rest is cut with a marker.")] = 16 * 2**20,
    session_idle_limit: Annotated[float, typer.Option(
        help="Seconds a connect session may go without input.")] = 1800,
    session_time_limit: Annotated[float, typer.Option(
        help="Seconds a connect session may last.")] = 8 * 3600,
    instance: Annotated[str | None, typer.Option(
        help="This instance's name among several on one database (default HOST:PORT).")
    ] = None,
    sign_key: Annotated[Path | None, typer.Option(
        help="The site's OpenPGP secret key: every image built is signed with it, as "
        "`apptainer sign` does (passphrase from HPCSTACK_SIGN_PASSPHRASE).")] = None,
    sign_key_fingerprint: Annotated[str | None, typer.Option(
        help="Which key of --sign-key, when the file holds several.")] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Run the U2CB build service (REST API under /api/v1, OpenAPI at /api/v1/docs)."""
    import uvicorn
    from pydantic import ValidationError

    from hpcstack.errors import UserError
    from hpcstack.service.app import create_app
    from hpcstack.service.config import Settings, default_data_dir, default_instance

    if executor not in ("local", "slurm"):
        raise UserError(f"--executor {executor}: use local or slurm")
    try:
        settings = Settings(
            data_dir=(data_dir or default_data_dir()).resolve(), database_url=database,
            munge_socket=munge_socket, admin_users=["root", *(admin or [])], executor=executor,
            slurm_partition=slurm_partition, max_workers=workers, max_builds_per_user=per_user,
            build_time_limit=time_limit, quota_bytes=quota, max_upload_bytes=max_upload,
            max_attempts=max_attempts, docker_cert_dir=docker_cert_dir,
            build_network=build_network, build_loopback_ports=build_loopback_port or [],
            build_log_bytes=build_log_limit, session_idle_limit=session_idle_limit,
            session_time_limit=session_time_limit, instance=instance or default_instance(port),
            sign_key=sign_key.resolve() if sign_key else None,
            sign_key_fingerprint=sign_key_fingerprint)
    except ValidationError as err:  # e.g. an --instance name with a space in it
        first = err.errors()[0]
        raise UserError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except Exception as err:  # a bad database URL or unwritable data directory
        raise UserError(f"cannot start the service: {str(err).splitlines()[0]}") from None
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="websockets-sansio")
