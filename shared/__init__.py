"""Switchboard's common package: event models, settings, Kafka and Postgres plumbing, auth, metrics."""
