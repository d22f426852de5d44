"""The demo application `gossamer demo` runs: a small shop of three services."""
