"""Deployments that run: invoking what is recorded applied (`reconciler run`), the
executions that record each call (`executions`), usage metrics from them (`metrics`),
and the engine that fires applied schedules (`fire.py`).

Executions live beside the recorded state, in the same backend (`store.py`): a run of a
deployment never changes what is applied, so it takes no environment lock.
"""
