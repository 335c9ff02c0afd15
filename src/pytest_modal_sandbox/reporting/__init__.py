"""What users see of their sandboxes beyond their tests' own output: failure sections,
JUnit properties and keep-on-failure (:mod:`.reports`, the pytest side), the starts as their
events tell them (:mod:`.starts`) and the end-of-run summary (:mod:`.summary`).
"""
