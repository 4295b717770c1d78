#!/bin/sh
# apptainer-sid-run CMD [ARGS...]: CMD as the calling user inside the sid tree (apptainer-sid.sh).
exec sudo -n -E /usr/local/libexec/hpcstack/apptainer-enter "$(id -un)" "$PWD" "$PATH" --run "$@"
