"""A stateful loopback simulator of the ConnectWise Manage, Autotask and Kaseya BMS APIs.

Never imported by `webapp`: SeatSync reaches it over HTTP like a real PSA. Run it with
`python -m psa_sim --port 8099 --seed demo`.
"""
