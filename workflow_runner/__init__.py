"""The runner agent inside the VM (`solstice-runner`).

It dials the orchestrator's Runner gRPC service, fetches its one job with a one-time token and
runs it: checkout (`checkout.py`), setup script and steps in their own process groups
(`process.py`, `job.py`), masked output batched into numbered log chunks that survive
reconnects (`logs.py`, `common.masking`), a heartbeat stream that carries cancels
(`heartbeat.py`), artifact upload (`artifacts.py`) after a scan that refuses files holding a
secret (`artifact_scan.py`) and the final result (`agent.py`).
Bootstrap and settings: `config.py`; entry point: `main.py`.
"""
