"""U2CB: the unprivileged container build service (REST API, queue, executors, auth)."""
