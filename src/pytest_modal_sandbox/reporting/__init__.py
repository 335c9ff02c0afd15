"""What users see of their sandboxes: failure sections, secret scrubbing, keep-on-failure,
JUnit properties and the end-of-run summary.

``hooks`` is the pytest side (one :class:`~.hooks.Reporting` plugin object per process);
``scrub``, ``diagnostics``, ``keep`` and ``summary`` are pytest-free.  Nothing is imported here,
so the core can use :mod:`.scrub` without importing pytest.
"""
