"""The Textual terminal UI (`libra-edge tui`): the only part of libra-edge that imports Textual.

It drives the engine, the store, batch runs and the model registry through their public
APIs, exactly as a library user would; `make_app` builds the application.
"""
