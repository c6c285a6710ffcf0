"""The one error a sharded run ends with (importable without torch.distributed: the CLI catches it)."""


class ShardFailure(RuntimeError):
    """A shard's process died, crashed or stopped answering: one line, naming the rank."""
