"""Process plumbing shared by the service entry points: config, logging, signals, child processes, the CLI."""
