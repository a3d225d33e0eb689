"""The bundled study files (``neve_tune.load_study("digits")``); each defines ``STUDY``."""
