"""Drop-in integrations: a model client's calls recorded and enforced by the fleet without wrapping each by hand.

    from fleet_agent.integrations.openai import fleet_openai        # pip install "fleet-agent[openai]"
    from fleet_agent.integrations.anthropic import fleet_anthropic  # "fleet-agent[anthropic]"
    from fleet_agent.integrations.litellm import FleetLiteLLM       # "fleet-agent[litellm]"
    from fleet_agent.integrations.langchain import FleetCallbackHandler  # "fleet-agent[langchain]"

Each module imports its client library only when it is imported itself: ``import fleet_agent`` (and this
package) never needs them. What they share (a call between admission and record, usage blocks read
into the record, streams recorded at their end) is :mod:`fleet_agent.integrations.calls` and
:mod:`fleet_agent.integrations.usage`. See docs/integrations.md.
"""
