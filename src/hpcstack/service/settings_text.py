"""What each setting of ``hpcstack serve`` means: one text for the settings model
(``config.Settings``) and for the flags' help, read without importing pydantic so that
every ``hpcstack`` command starts fast."""

MEANING = {
    "host": "Address to listen on.",
    "port": "TCP port.",
    "data_dir": (
        "Records, images, logs and build caches (mode 0700); default "
        "~/.local/share/u2cb of the service account."
    ),
    "database_url": (
        "SQLAlchemy URL, e.g. postgresql+psycopg://u2cb@/u2cb; default "
        "SQLite (WAL) in the data directory."
    ),
    "munge_socket": "munged's socket; default munged's.",
    "admin_users": "User names with admin rights (root always).",
    "executor": "local | slurm: every build an sbatch job.",
    "slurm_partition": "The Slurm partition for builds.",
    "max_workers": "Builds at once, all users.",
    "max_builds_per_user": "Builds (and connect sessions) at once per user.",
    "build_time_limit": "Seconds a build may run.",
    "quota_bytes": "Bytes each user may store.",
    "max_upload_bytes": "Bytes one defcreate request body may have.",
    "max_attempts": "Runs of a build interrupted by a restart before it is failed.",
    "docker_cert_dir": (
        "CA certificate directory for the site's registry (docker:// "
        "bases)."
    ),
    "build_network": (
        "User-mode network (pasta; the host's loopback unreachable) for "
        "builds and sessions, or none."
    ),
    "build_loopback_ports": (
        "TCP ports on the host's loopback builds may reach, e.g. "
        "a registry mirror."
    ),
    "build_log_bytes": "Bytes of a build's log kept; the rest is cut with a marker.",
    "session_idle_limit": "Seconds a connect session may go without input.",
    "session_time_limit": "Seconds a connect session may last.",
    "instance": (
        "This instance's name among several on one database; default "
        "HOST:PORT."
    ),
    "poll_interval": "Seconds between the scheduler's rounds.",
    "metrics_readers": (
        "Who may read GET /metrics: '*' anyone (no credential), else "
        "these user names and the admins."
    ),
    "pid_file": (
        "Where serve writes its PID (serve --stop reads it); default serve-"
        "INSTANCE.pid in the data directory."
    ),
    "sign_key": (
        "The site's OpenPGP secret key: every image built is signed with it, as "
        "`apptainer sign` does (passphrase from HPCSTACK_SIGN_PASSPHRASE)."
    ),
    "sign_key_fingerprint": "Which key of sign_key, when the file holds several.",
    "log_level": "debug | info | warning | error",
}
