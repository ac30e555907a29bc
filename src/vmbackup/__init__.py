"""vmbackup: VM disk backups behind an OnApp-compatible REST API."""

__version__ = "0.1.0"
