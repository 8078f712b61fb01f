"""qpopper-py: Qpopper 4.1 rebuilt in Python."""

__version__ = "0.1.0"
# The Qpopper release whose behaviour we reproduce; shown in the banner, CAPA and log lines.
QPOPPER_VERSION = "4.1.0"
