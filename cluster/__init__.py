"""Talk to a Ray cluster on Kubernetes: its status, and search jobs submitted to it."""
