"""The closed loop: rounds of field frames → hard examples → labels → fine-tune → gate → release.

Plain functions (no Prefect): `loop.stages` composes governance, labeling, models, edge and
analysis into one stage each; `loop.runner` runs the rounds with a `call` hook, so the Prefect
flow `closed-loop` (flows/loop.py) and the direct run of the benchmark execute the same code.
"""
