"""Tools of the repository, by purpose (scripts/README.md); run them as modules from the repository root."""
