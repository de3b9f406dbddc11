"""Asset factories of each product level."""

import warnings

import dagster as dg

# BackfillPolicy is beta in Dagster 1.13; the pipeline relies on it to amortize run start-up.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
