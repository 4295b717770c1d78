"""The portal's settings file, written by ``hpcstack studio generate`` (``portal.yaml``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hpcstack import yamlfile
from hpcstack.studio.config import U2cbBase


class PortalConfig(BaseModel):
    """Where the service is (else as ``u2cb`` finds it) and the bases the page offers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = "Container builds (U2CB)"
    server: str | None = Field(None, description="the U2CB service URL (default: as u2cb)")
    bases: list[U2cbBase] = []  # the studio file's u2cb.bases, as generate wrote them
    max_upload: int | None = Field(None, ge=1, description="bytes; the page refuses more "
                                   "before sending (the service enforces its own)")


def load_config(path: Path | None) -> PortalConfig:
    if path is None:
        return PortalConfig()
    return yamlfile.parse(yamlfile.read(path), PortalConfig, str(path))
