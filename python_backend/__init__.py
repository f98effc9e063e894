"""Shared, importable logic of the fraud service: feature declarations, model contracts,
rules. Imported by training, the feature jobs, the Triton Python-backend models and the
client; depends on numpy and PyYAML only, so it loads in the serving interpreter."""
