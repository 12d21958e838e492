"""Launchers and torch.library registrations, one op per file."""
