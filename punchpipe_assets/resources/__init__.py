"""Resources: the file catalog, the archive and the pipeline configuration."""

from __future__ import annotations

import dagster as dg

from punchpipe_assets.config import PipelineConfig, load_config
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import CatalogResource


class PipelineResource(dg.ConfigurableResource):
    """The validated pipeline configuration (see ``punchpipe_assets.config``).

    Attributes
    ----------
    config_file
        A YAML configuration file; default: ``$PUNCHPIPE_CONFIG`` or the home folder's.
    """

    config_file: str | None = None

    @property
    def config(self) -> PipelineConfig:
        """The configuration, validated."""
        return load_config(self.config_file)


def build_resources(config: PipelineConfig, config_file: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources of one installation."""
    return {
        "catalog": CatalogResource(url=config.catalog_url),
        "archive": ArchiveResource(root=str(config.archive_dir)),
        "pipeline": PipelineResource(config_file=config_file),
    }


__all__ = ["ArchiveResource", "CatalogResource", "PipelineResource", "build_resources"]
