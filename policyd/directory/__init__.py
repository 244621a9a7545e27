"""Directories answer which sender addresses a login owns (and the reverse)."""

from policyd.directory.base import Directory, DirectoryError, DirectoryUnavailable

__all__ = ["Directory", "DirectoryError", "DirectoryUnavailable"]
