"""Reading and writing files safely: atomic writes, size limits checked before reading, process locks, text from files made safe to show."""
