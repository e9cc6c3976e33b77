"""Networks: building a classifier from a backbone plugin, reading weights files and bundles, the layer tree, the feature cache, few-shot support sets."""
