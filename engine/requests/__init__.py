"""Requests: their life cycle, the checks a new one passes, and what the engine keeps of them.

  request.py   Request and its states (waiting, prefill, decode, finished, preempted)
  checks.py    what makes a request acceptable, checked before anything is queued
  finished.py  every request given, finished ones kept compact
  views.py     a step's requests captured as plain values for its record
"""
