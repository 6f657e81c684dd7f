//! Alerts to Slack, Microsoft Teams, Discord and generic JSON webhooks.
