"""The event contract's messages, by family (fields, agents, costs, commands, jobs). Import them from
:mod:`fleet_agent.contracts`, the public module that names every one of them."""
