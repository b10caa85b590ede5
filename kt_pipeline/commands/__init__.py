"""CLI subcommands; see kt_pipeline.cli for the contract each module follows."""
