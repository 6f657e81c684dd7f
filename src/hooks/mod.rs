//! Webhook calls and gate semantics.
