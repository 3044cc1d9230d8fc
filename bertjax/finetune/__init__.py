"""Fine-tuning on GLUE: tasks, data readers, heads, metrics."""
