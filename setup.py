"""Packaging for punchpipe, the PUNCH Science Operations Center pipeline on Dagster."""

from setuptools import find_packages, setup

setup(
    name="punchpipe-dagster",
    version="0.1.0",
    description="PUNCH Science Operations Center pipeline as a Dagster asset platform",
    packages=find_packages(include=["punchpipe_assets", "punchpipe_assets.*"]),
    package_data={"punchpipe_assets": ["telemetry/definitions/*.csv", "instance/*.yaml"]},
    python_requires=">=3.13",
    install_requires=[
        "punchbowl[all]==0.0.25",
        "prefect-sqlalchemy==0.6.1",
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-graphql==1.13.27",
        "dagster-postgres==0.29.27",
        "astropy>=7,<9",  # archive.py uses astropy.io.fits.hdu.compressed.DITHER_SEED_CHECKSUM
        "sqlalchemy>=2.0,<2.2",
        "psycopg2-binary>=2.9",
        "pydantic>=2.7",
        "pyyaml>=6",
        "ccsdspy==2.0.1",
        "imagecodecs>=2024.1.1",
        "numpy-quaternion>=2024.0",
        "click>=8.1",
        "rich>=13",
        "filelock>=3.12",  # one writer per home (guard.py)
        "tenacity==9.2.1",  # catalog and Dagster storage ride out short database outages
        "imageio-ffmpeg==0.8.1",  # the daily Level Q movie (MP4); ships its own ffmpeg binary
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "requests>=2.31",
            "ruff==0.17.6",
            "hypothesis>=6.100",
            "pytest-xdist>=3.6",
            "psutil>=7",  # worker and run-monitoring tests find and kill pool processes; bench_celery RSS
            # Drives Debian's /usr/bin/chromium (the UI test); never `playwright install`.
            "playwright==1.65.2",
        ],
        "celery": ["dagster-celery==0.29.27", "celery<5.7", "redis>=5"],
    },
    entry_points={"console_scripts": ["punchpipe=punchpipe_assets.cli:main"]},
)
