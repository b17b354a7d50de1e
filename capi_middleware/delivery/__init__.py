"""The background sender: storage, batching, the Graph client and error classes."""
