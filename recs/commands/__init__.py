"""`recs` subcommands, one module per area, each with register(app)."""
