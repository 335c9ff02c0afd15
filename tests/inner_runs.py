"""How the suite's own inner pytest runs are configured (``tests/conftest.py`` puts this
directory on ``sys.path``).

``ADDOPTS`` go into the ``pytest.ini`` of every inner run the tests write (pytester's, the fault
suite's): no cache directory, and not anyio's pytest plugin.  anyio is installed as one of
modal's dependencies and its plugin is loaded by every pytest process, each of which then
imports and rewrites anyio and its asyncio backend: about 0.3 s of CPU per process, for a
plugin none of the inner runs uses.  The runs that stand for a user's own (the samples in
docs/, the live suite's own command) keep it.
"""

ADDOPTS = "-p no:cacheprovider -p no:anyio"
