"""Domain layer: errors, desired-state types and the services that change state."""
