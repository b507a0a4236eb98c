"""sscontrold: the signaling daemon of sscontrol."""

__version__ = "0.1.0"
