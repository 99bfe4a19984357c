"""Command-line scripts; a package so that tests and other code can import their registries."""
