#!/bin/sh
# SCIF apps (`--app NAME`): the chosen app's bin, lib and environment, taken from
# /scif/apps/NAME, else from /scif/apps/singularity.
if [ -n "${SINGULARITY_APPNAME:-}" ]; then
    export SINGULARITY_APPNAME
    _hpcstack_app="/scif/apps/$SINGULARITY_APPNAME"
    if [ ! -d "$_hpcstack_app/" ]; then
        echo "Could not locate the container application: $SINGULARITY_APPNAME"
        exit 1
    fi
    SCIF_APPS=/scif/apps
    SCIF_APPROOT="$_hpcstack_app"
    export SCIF_APPS SCIF_APPROOT
    PATH="$_hpcstack_app:/scif/apps/singularity:$PATH"
    for _hpcstack_dir in "$_hpcstack_app" /scif/apps/singularity; do
        if [ -d "$_hpcstack_dir/bin" ]; then
            PATH="$_hpcstack_dir/bin:$PATH"
            break
        fi
    done
    for _hpcstack_dir in "$_hpcstack_app" /scif/apps/singularity; do
        if [ -d "$_hpcstack_dir/lib" ]; then
            LD_LIBRARY_PATH="$_hpcstack_dir/lib:${LD_LIBRARY_PATH:-}"
            export LD_LIBRARY_PATH
            break
        fi
    done
    for _hpcstack_env in 01-base.sh 90-environment.sh; do
        for _hpcstack_dir in "$_hpcstack_app" /scif/apps/singularity; do
            if [ -f "$_hpcstack_dir/scif/env/$_hpcstack_env" ]; then
                . "$_hpcstack_dir/scif/env/$_hpcstack_env"
                break
            fi
        done
    done
    unset _hpcstack_app _hpcstack_dir _hpcstack_env
    export PATH
fi
