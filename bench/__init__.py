"""Load benchmark of the app against a bare reference server (see bench/README.md)."""
