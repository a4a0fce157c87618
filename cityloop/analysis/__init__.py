"""Video task analysis: tracking, scenario rules, the event store, alerts, evaluation, reports, dashboard.

Torch-free and Prefect-free: edge nodes, the patrol runner and the flows all call these plain functions.
"""
