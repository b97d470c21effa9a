"""The `imagegen` subcommands, one module per area. Only argparse and small modules load at start-up: torch and
diffusers are imported inside the commands that use them."""
