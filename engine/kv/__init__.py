"""KV caches: dense, paged (a block pool with an allocator), and the int8 pool."""
