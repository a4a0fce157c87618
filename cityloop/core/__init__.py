"""The ground floor: settings and params, process lifecycle, geometry, small HTTP helpers.

Nothing here imports a wing (governance, labeling, models, bento, edge, analysis, loop), the
flows or the top floor (the CLI, the stack); `tests/test_layers.py` holds that line.
"""
