"""The ``cdp`` command line."""
