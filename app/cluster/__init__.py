"""Redis Cluster access: slot routing over per-node clients, and topology."""
