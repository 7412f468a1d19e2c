"""The chaos harness behind `scripts/chaos.py`: one module per scenario, plus the server, client and report helpers.

Every scenario is `async def run(start, options) -> Result`, where `start(*serve_args)` returns a started
`gpupool serve` (scripts/chaos/server.py here, tests/conftest.py's RouterProcess in the test suite).
"""
