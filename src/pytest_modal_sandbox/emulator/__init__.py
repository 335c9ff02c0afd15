"""An offline emulator of Modal's sandbox control plane, for the real ``modal`` client.

Run it with ``python -m pytest_modal_sandbox.emulator``; see ``docs``/the CLI's ``--help``.
"""
