"""The lab: a simulated internet in network namespaces, built and torn down by fixtures.

`lab` is where corridor runs; its only link leads to `world`, which answers DNS for
`.test` names, serves HTTP/HTTPS and a TCP echo, and records everything else it receives
(the catch-all), so a leak from the sandbox is seen, not guessed.
"""
