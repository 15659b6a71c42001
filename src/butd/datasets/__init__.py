"""Dataset generators and loaders."""
