"""Intelligent scheduling: which scenarios run on which camera, on which edge node, with which model
version and at how many frames per second, slot by slot through the day.

    params.py   the `schedule:` section of params.yaml
    plan.py     the plan itself: pure functions from inputs to a `Plan` (windows, model choice,
                packing within each node's budget), and what a node does with one (`NodeSchedule`)
    inputs.py   the inputs read from a workspace: cameras.json, edge nodes' status, the algorithm
                repository, params.yaml `scenarios:`
    store.py    plans as versioned artifacts (`plan-vN.json`, `current`), diffs, `apply` to the nodes

Nothing here imports Prefect (flows/schedule.py re-plans on a schedule) or torch (edge nodes load
`plan.py`).
"""
