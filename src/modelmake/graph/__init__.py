"""The build-graph machinery: config composition and override syntax, plans and keys, code
versions, the stage runner, Snakemake and DVC glue, clusters. Imports only `core`: it knows no
stage and no model, so its code is in no artifact's key (see docs/keys.md)."""
