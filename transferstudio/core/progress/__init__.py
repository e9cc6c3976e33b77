"""How a run reports what it is doing: the events it emits, their text stream between processes, and the time left."""
