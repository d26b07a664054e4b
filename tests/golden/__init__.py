"""The golden log: a recorded ``task.events`` log and the fold's recorded answer to it.

``log.bin.gz`` holds the records (key and Avro value, in log order) that
``python -m tests.golden.generate`` simulated; ``expected.json.gz`` holds what the fold of the
time answered to each of them. ``tests/unit/test_golden_log.py`` and
``tests/integration/test_golden_log.py`` check that the fold still answers the same.
"""
