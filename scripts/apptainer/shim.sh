#!/bin/sh
# `apptainer` for an ordinary user: enter the sid tree as that same user (apptainer-sid.sh).
exec sudo -n -E /usr/local/libexec/hpcstack/apptainer-enter "$(id -un)" "$PWD" "$PATH" "$@"
