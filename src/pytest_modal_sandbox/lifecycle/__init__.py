"""Runs and their sandboxes' lifetimes, pytest-free, one module per role.

* :mod:`.tags`: run ids and the tags every sandbox carries;
* :mod:`.runs`: the run lock, the run record and the ledger; sweeping by id;
* :mod:`.signals`: SIGTERM as Ctrl-C, and Ctrl-C that cannot be lost;
* :mod:`.watchdog`: a helper process that dies with this one.
"""
