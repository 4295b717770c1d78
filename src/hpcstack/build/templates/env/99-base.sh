#!/bin/sh
# Runtime defaults: libraries bound in by the runtime (e.g. GPU drivers) come last,
# and a prompt only where the caller has none.  Safe under `set -u`.
LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/.singularity.d/libs"
: "${PS1:=Apptainer> }"
export LD_LIBRARY_PATH PS1
