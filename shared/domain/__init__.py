"""Pure decisions on plain data: no I/O here, so every rule is testable without a server."""
