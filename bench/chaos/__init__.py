"""The seeded chaos run: random traffic through cardflow's public entry points,
provider faults, disordered webhooks and process kills, then every money
invariant checked against a model of what each wallet must hold.

`plan` draws the operations and faults from the seed; `workload` does them;
`run` drives the stack, the faults and the kills; `money` and `invariants`
check the end state. `cardflow chaos` is its command.
"""
