"""From image folders (and the other data roles) to validated splits, transforms and DataLoaders; the demo's generated data."""
