"""Developer tools (checks run on the development machines and in `make test`), never deployed."""
