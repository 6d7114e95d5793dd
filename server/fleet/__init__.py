"""The fleet aggregator: its process, FleetService (ValidateFleet, WatchFleet, WhatIf, ListNodes, registration),
the live fan-out to node daemons and the conversion of its answers.
"""
