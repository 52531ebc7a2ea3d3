"""sudo-edge: Sudo's daemon on the family's Raspberry Pi."""

__version__ = "0.1.0"
