"""Using a trained model: prediction on new images and export through exporter plugins."""
