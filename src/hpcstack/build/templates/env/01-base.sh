#!/bin/sh
# Base environment: applied first, before the image's own.
