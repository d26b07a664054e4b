"""Discovery Orchestrator: an event-sourced task orchestrator on Apache Kafka."""
