"""Slack: the Bolt app (/fleet and button clicks), its commands, and the Web API client the functions post through."""
