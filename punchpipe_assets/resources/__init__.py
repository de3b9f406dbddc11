"""Resources: the file catalog, the archive and the pipeline configuration."""

from __future__ import annotations

import dagster as dg

from punchpipe_assets.config import PipelineConfig
from punchpipe_assets.resources.archive import ArchiveResource
from punchpipe_assets.resources.catalog import CatalogResource


class PipelineResource(dg.ConfigurableResource):
    """The validated pipeline configuration (see ``punchpipe_assets.config``).

    Attributes
    ----------
    settings_json
        The configuration as JSON, as ``PipelineConfig.model_dump_json`` writes it.

    """

    settings_json: str

    @property
    def config(self) -> PipelineConfig:
        """The configuration, validated."""
        return PipelineConfig.model_validate_json(self.settings_json)


def build_resources(config: PipelineConfig) -> dict[str, dg.ConfigurableResource]:
    """Build the resources of one installation."""
    return {
        "catalog": CatalogResource(url=config.catalog_url),
        "archive": ArchiveResource(
            root=str(config.archive_dir),
            quicklook_size=config.quicklook.file_size,
            thumbnail_size=config.quicklook.size,
        ),
        "pipeline": PipelineResource(settings_json=config.model_dump_json()),
    }


__all__ = ["ArchiveResource", "CatalogResource", "PipelineResource", "build_resources"]
